"""Content-addressed cache of succeeded results, so a request answered before is never paid again.

Invariants:
- The key is sha256 over the provider and the request as it would be sent, minus its
  ``custom_id``: the same prompt to the same model with the same options hits, anything else
  misses. Keys never contain secrets; entries hold the result record only.
- Only succeeded results are stored. An entry older than ``ttl`` is a miss.
- One file per entry (``<root>/<key[:2]>/<key>.json``) on any ObjectStoragePath: writers never
  contend, and a partial write is never read as a hit (a malformed entry is a miss).
- Callers look up and store ``CACHE_BLOCK`` entries at a time, so object storage serves them
  concurrently.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from batch_provider.core.models import ItemStatus, LLMRequest, ResultRecord

log = logging.getLogger(__name__)

CACHE_BLOCK = 512
"""Entries looked up (at submit) or stored (at collect) at once: one concurrent fetch or put on
object storage."""


class ResultCache:
    """Entries are read and written a block at a time (:meth:`get_many`, :meth:`put_many`): on
    object storage one block costs about one round trip, as fsspec runs its requests concurrently,
    so a million lookups are thousands of round trips rather than a million."""

    store_retries: int = 3
    """Further tries of a block whose write failed (see :meth:`store_safely`)."""
    store_backoff: float = 1.0
    """Seconds before the first further try; doubled for each next one."""

    def __init__(self, root: Any, *, ttl: timedelta | None = None):
        self.root = root
        self.ttl = ttl
        self._made: set[str] = set()  # shard folders this instance created or found

    def __repr__(self) -> str:
        return f"ResultCache({str(self.root)!r}, ttl={self.ttl})"

    @staticmethod
    def key(provider: str, request: LLMRequest) -> str:
        body = request.model_dump(mode="json", exclude={"custom_id"}, exclude_none=True)
        raw = json.dumps([provider, body], sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(raw.encode()).hexdigest()

    def _path(self, key: str) -> Any:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str, custom_id: str) -> ResultRecord | None:
        """The cached success for ``key``, relabelled with ``custom_id``; None on a miss."""
        record = self.get_many([key]).get(key)
        return None if record is None else relabelled(record, custom_id)

    def get_many(self, keys: Iterable[str]) -> dict[str, ResultRecord]:
        """The fresh entries among ``keys``: key → stored record (not relabelled). A missing,
        expired or malformed entry is simply absent."""
        wanted = list(dict.fromkeys(keys))
        found = self._read_many(wanted) if wanted else {}
        records: dict[str, ResultRecord] = {}
        now = datetime.now(UTC)
        for key, data in found.items():
            try:
                entry = json.loads(data)
                stored_at = datetime.fromisoformat(entry["stored_at"])
                record = ResultRecord.model_validate(entry["record"])
            except (ValueError, KeyError, TypeError):
                continue
            if self.ttl is None or now - stored_at <= self.ttl:
                records[key] = record
        return records

    def put(self, key: str, record: ResultRecord) -> None:
        self.put_many([(key, record)])

    def put_many(self, entries: Iterable[tuple[str, ResultRecord]]) -> None:
        """Store the succeeded records among ``entries`` (others are ignored)."""
        stored_at = datetime.now(UTC).isoformat()
        blobs = {
            key: json.dumps(
                {"stored_at": stored_at, "record": record.model_dump(mode="json", exclude_none=True)},
                separators=(",", ":"),
            ).encode()
            for key, record in entries
            if record.status is ItemStatus.SUCCEEDED
        }
        if not blobs:
            return
        for key in blobs:
            if key[:2] not in self._made:
                self._path(key).parent.mkdir(parents=True, exist_ok=True)
                self._made.add(key[:2])
        fs = getattr(self.root, "fs", None)
        if fs is not None:
            fs.pipe({self._path(key).path: data for key, data in blobs.items()})
            return
        for key, data in blobs.items():
            with self._path(key).open("wb") as fh:
                fh.write(data)

    def store_safely(self, entries: Sequence[tuple[str, ResultRecord]]) -> int:
        """Store ``entries`` like :meth:`put_many`, never raising: the cache is optional, so a
        write that keeps failing (after ``store_retries`` further tries with a doubling backoff)
        is logged as a warning and costs only the cache entries. Returns how many succeeded
        records were not stored."""
        wanted = sum(1 for _, record in entries if record.status is ItemStatus.SUCCEEDED)
        delay = self.store_backoff
        for attempt in range(self.store_retries + 1):
            try:
                self.put_many(entries)
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

    def _read_many(self, keys: list[str]) -> dict[str, bytes]:
        fs = getattr(self.root, "fs", None)
        if fs is not None:  # an ObjectStoragePath: one concurrent fetch
            by_path = {fs._strip_protocol(self._path(key).path): key for key in keys}
            fetched = fs.cat(list(by_path), on_error="omit")
            return {by_path[fs._strip_protocol(path)]: data for path, data in fetched.items()}
        found: dict[str, bytes] = {}
        for key in keys:
            try:
                with self._path(key).open("rb") as fh:
                    found[key] = fh.read()
            except OSError:
                continue
        return found


def relabelled(record: ResultRecord, custom_id: str) -> ResultRecord:
    """A cached record as the answer to ``custom_id`` in this run."""
    return record.model_copy(update={"custom_id": custom_id, "cached": True})
