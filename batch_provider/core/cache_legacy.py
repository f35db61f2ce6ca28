"""The result cache's first layout, one object per entry, still read so older entries keep hitting.

Layout: ``<root>/<key[:2]>/<key>.json`` holding ``{"stored_at", "record"}``. Nothing writes it any
more; :func:`migrate_legacy` moves its entries into one segment.

Invariants:
- The layout is looked for once per reader (one listing of the root): a cache without it costs
  no extra request per miss.
- A malformed entry is a miss, as it always was.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from pydantic import BaseModel

from batch_provider.core.cache_segments import SegmentWriter, list_names, read_objects
from batch_provider.core.models import ItemStatus, ResultRecord
from batch_provider.core.rundir import local_path

_SHARD = re.compile(r"^[0-9a-f]{2}$")
_ENTRY_NAME = re.compile(r"^[0-9a-f]{64}\.json$")


def legacy_name(key: str) -> str:
    return f"{key[:2]}/{key}.json"


def legacy_shards(root: Any) -> list[str]:
    """The shard folders of the per-entry layout under ``root`` (empty when it has none)."""
    return sorted(name for name in list_names(root) if _SHARD.match(name))


class StoredEntry(BaseModel):
    """One entry as either layout stores it (segment lines add the ``key``)."""

    key: str | None = None
    stored_at: datetime
    record: ResultRecord


def parse_entry(data: bytes) -> tuple[datetime, ResultRecord] | None:
    """(stored_at, record) of one stored entry (either layout's JSON), None when malformed."""
    try:
        entry = StoredEntry.model_validate_json(data)
    except ValueError:
        return None
    if entry.stored_at.tzinfo is None:
        return None
    return entry.stored_at, entry.record


def read_legacy(root: Any, keys: list[str]) -> dict[str, bytes]:
    """The per-entry objects of ``keys`` that exist: key → bytes."""
    found = read_objects(root, [legacy_name(key) for key in keys])
    return {name.rsplit("/", 1)[1].removesuffix(".json"): data for name, data in found.items()}


def _legacy_entries(root: Any, shards: list[str]) -> Iterator[tuple[str, str]]:
    """(key, object name) of every entry in ``shards``."""
    for shard in shards:
        for name in list_names(root / shard):
            if _ENTRY_NAME.match(name):
                yield name.removesuffix(".json"), f"{shard}/{name}"


def migrate_legacy(root: Any, *, block: int = 512, remove: bool = True) -> int:
    """Copy every well-formed succeeded entry of the per-entry layout into one segment (each keeps
    its own ``stored_at``), then, with ``remove``, delete the per-entry objects. Returns how many
    entries were copied. The segment is committed before anything is deleted, so a migration cut
    short loses nothing; running it again copies what is left."""
    shards = legacy_shards(root)
    if not shards:
        return 0
    writer = SegmentWriter(root)
    copied: list[str] = []
    pending: list[tuple[str, str]] = []

    def flush() -> None:
        fetched = read_objects(root, [name for _, name in pending])
        for key, name in pending:
            parsed = parse_entry(fetched[name]) if name in fetched else None
            if parsed is not None and parsed[1].status is ItemStatus.SUCCEEDED:
                writer.add(key, parsed[1], stored_at=parsed[0])
            copied.append(name)
        pending.clear()

    for entry in _legacy_entries(root, shards):
        pending.append(entry)
        if len(pending) >= block:
            flush()
    if pending:
        flush()
    moved = writer.count
    writer.commit()
    if remove:
        _remove(root, copied)
    return moved


def _remove(root: Any, names: list[str]) -> None:
    local = local_path(root)
    if local is not None:
        for name in names:
            (local / name).unlink(missing_ok=True)
        return
    if names:
        root.fs.rm([(root / name).path for name in names])
