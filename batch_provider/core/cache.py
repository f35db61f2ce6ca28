"""Content-addressed cache of succeeded results, so a request answered before is never paid again.

Invariants:
- The key is sha256 over the provider and the request as it would be sent, minus its
  ``custom_id``: the same prompt to the same model with the same options hits, anything else
  misses. Keys never contain secrets; entries hold the result record only.
- Only succeeded results are stored. An entry older than ``ttl`` is a miss.
- Entries are stored a segment at a time (:mod:`.cache_segments`): a collect writes one segment
  and one index per batch, however many rows it holds, and a partial write is never read as a
  hit. Writers never contend: each one's objects have names of their own.
- A reader loads every fresh index once (one listing, one concurrent fetch), then reads the hits
  of each block of ``CACHE_BLOCK`` keys with a ranged request per run of nearby entries.
- Entries of the older one-object-per-entry layout (:mod:`.cache_legacy`) still hit, looked up
  only when that layout is present.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from batch_provider.core.cache_legacy import legacy_shards, migrate_legacy, parse_entry, read_legacy
from batch_provider.core.cache_segments import (
    SegmentReader,
    SegmentWriter,
    expired_names,
    load_table,
    remove_segments,
)
from batch_provider.core.models import ItemStatus, LLMRequest, ResultRecord, assign

log = logging.getLogger(__name__)

CACHE_BLOCK = 512
"""Keys submit looks up at once: at most one ranged read per run of nearby hits in a segment."""


class ResultCache:
    """Lookups go a block at a time (:meth:`get_many`); stores a segment at a time
    (:meth:`segment`, or :meth:`put_many` / :meth:`store_safely` for one list of entries)."""

    store_retries: int = 3
    """Further tries of a segment whose write failed (see :meth:`store_safely`)."""
    store_backoff: float = 1.0
    """Seconds before the first further try; doubled for each next one."""

    def __init__(self, root: Any, *, ttl: timedelta | None = None):
        self.root = root
        self.ttl = ttl
        self._reader: SegmentReader | None = None
        self._legacy: bool | None = None

    def __repr__(self) -> str:
        return f"ResultCache({str(self.root)!r}, ttl={self.ttl})"

    @staticmethod
    def key(provider: str, request: LLMRequest) -> str:
        return hashlib.sha256(ResultCache.key_text(provider, request).encode()).hexdigest()

    @staticmethod
    def key_text(provider: str, request: LLMRequest) -> str:
        """The JSON a key hashes: the provider and the request minus its custom_id, keys sorted."""
        body = request.model_dump(mode="json", exclude={"custom_id"}, exclude_none=True)
        return json.dumps([provider, body], sort_keys=True, separators=(",", ":"), ensure_ascii=False)

    def get(self, key: str, custom_id: str) -> ResultRecord | None:
        """The cached success for ``key``, relabelled with ``custom_id``; None on a miss."""
        record = self.get_many([key]).get(key)
        return None if record is None else relabelled(record, custom_id)

    def get_many(self, keys: Iterable[str]) -> dict[str, ResultRecord]:
        """The fresh entries among ``keys``: key → stored record (not relabelled). A missing,
        expired or malformed entry is simply absent. The indexes are read by the first call;
        entries stored later by other writers are seen by a new instance."""
        wanted = list(dict.fromkeys(keys))
        if not wanted:
            return {}
        if self._reader is None:
            self._reader = SegmentReader(self.root, load_table(self.root, self.ttl))
            self._legacy = bool(legacy_shards(self.root))
        found = self._reader.lines(wanted)
        records = self._fresh(found)
        if self._legacy:
            missing = [key for key in wanted if key not in records]
            records.update(self._fresh(read_legacy(self.root, missing)) if missing else {})
        return records

    @property
    def segment_reads(self) -> int:
        """Ranged segment reads this instance has sent (index and listing requests aside)."""
        return 0 if self._reader is None else self._reader.requests

    def _fresh(self, found: dict[str, bytes]) -> dict[str, ResultRecord]:
        records: dict[str, ResultRecord] = {}
        now = datetime.now(UTC)
        for key, data in found.items():
            parsed = parse_entry(data)
            if parsed is None:
                continue
            stored_at, record = parsed
            if record.status is ItemStatus.SUCCEEDED and (self.ttl is None or now - stored_at <= self.ttl):
                records[key] = record
        return records

    def segment(self) -> SegmentWriter:
        """A writer of one segment: ``add`` each succeeded entry, then :meth:`commit_safely`."""
        return SegmentWriter(self.root)

    def put(self, key: str, record: ResultRecord) -> None:
        self.put_many([(key, record)])

    def put_many(self, entries: Iterable[tuple[str, ResultRecord]]) -> None:
        """Store the succeeded records among ``entries`` (others are ignored) as one segment."""
        writer = self.segment()
        try:
            for key, record in entries:
                if record.status is ItemStatus.SUCCEEDED:
                    writer.add(key, record)
            if writer.commit() is not None:
                self._reader = None  # read again, so this instance sees what it stored
        finally:
            writer.discard()

    def store_safely(self, entries: Sequence[tuple[str, ResultRecord]]) -> int:
        """Store ``entries`` like :meth:`put_many`, never raising: the cache is optional, so a
        write that keeps failing (after ``store_retries`` further tries with a doubling backoff)
        is logged as a warning and costs only the cache entries. Returns how many succeeded
        records were not stored."""
        wanted = sum(1 for _, record in entries if record.status is ItemStatus.SUCCEEDED)
        return self._retrying(lambda: self.put_many(entries), wanted)

    def commit_safely(self, writer: SegmentWriter) -> int:
        """Commit ``writer`` like :meth:`store_safely` stores: retried, never raising; returns how
        many of its entries were not stored."""
        try:
            return self._retrying(writer.commit, writer.count)
        finally:
            writer.discard()
            if writer.committed:
                self._reader = None  # read again, so this instance sees what it stored

    def prune(self) -> int:
        """Delete the segments whose every entry is past the TTL (nothing without a TTL); returns
        how many were deleted. Entries still fresh are never touched."""
        if self.ttl is None:
            return 0
        names = expired_names(self.root, self.ttl)
        remove_segments(self.root, names)
        self._reader = None
        return len(names)

    def migrate_legacy(self) -> int:
        """Move the entries of the one-object-per-entry layout into a segment (see
        :func:`.cache_legacy.migrate_legacy`); returns how many were moved."""
        moved = migrate_legacy(self.root)
        self._reader = None
        return moved

    def _retrying(self, store: Callable[[], object], wanted: int) -> int:
        delay = self.store_backoff
        for attempt in range(self.store_retries + 1):
            try:
                store()
                return 0
            except Exception as exc:
                if attempt == self.store_retries:
                    log.warning(
                        "Result cache %s: %d entries not stored after %d tries (%s: %s); the results "
                        "files are unaffected",
                        self.root,
                        wanted,
                        attempt + 1,
                        type(exc).__name__,
                        exc,
                    )
                    return wanted
                log.info("Result cache write failed (%s: %s); again in %.1fs", type(exc).__name__, exc, delay)
                time.sleep(delay)
                delay *= 2
        return wanted  # pragma: no cover - the loop always returns


def relabelled(record: ResultRecord, custom_id: str) -> ResultRecord:
    """A cached record as the answer to ``custom_id`` in this run: ``record`` itself, relabelled
    in place. The records :meth:`ResultCache.get_many` returns are the caller's own (decoded per
    call), so no copy is made; one record serving several ids is written after each relabel."""
    assign(record, "custom_id", custom_id)
    assign(record, "cached", True)
    return record
