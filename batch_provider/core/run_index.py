"""A compact index of run folders, for pages that list many runs without opening every manifest.

Layout, next to the run folders (``<run_path>/_index/``):
- ``runs/<digest>.<version>.json``: one small entry per run folder, written by collect and retry
  each time they write the run's manifest. ``digest`` is the run key's digest (one per folder);
  ``version`` is a zero-padded nanosecond time, so a rewritten entry gets a new name and readers
  that cache entries by name never serve a stale one.
- ``segment.json``: every entry a reader has seen, by file name, written by readers. It is only a
  cache of ``runs/``: a cold reader loads it with one read and then opens only the entry files it
  does not hold. Losing it, or two readers racing to write it, costs re-reads, never entries.

Invariants:
- An entry holds figures and names only (counts, dollars, timings, tags, batch ids): never keys,
  request or result content.
- Writing the index never fails a run: :func:`record_run` logs a warning and returns.
- Of several versions of one digest, readers keep the highest and delete the others
  (best-effort); a writer only ever adds a file, so collect never lists the index.
"""

from __future__ import annotations

import itertools
import json
import logging
import pathlib
import threading
import time
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from batch_provider.core.rundir import RunDirectory, read_json, write_json_atomic

log = logging.getLogger(__name__)

INDEX_DIR = "_index"
ENTRIES_DIR = "runs"
SEGMENT = "segment.json"
ENTRY_VERSION = 1
SEGMENT_EVERY_S = 30.0
"""A reader rewrites the segment at most this often (or sooner after many new entries)."""
SEGMENT_AFTER_NEW = 200
_VERSIONS = itertools.count(1)


def index_root(run_dir: RunDirectory) -> Any:
    """``<run_path>/_index`` for a folder laid out by ``run_directory``: ``<run_path>/<dag>/<run>/<leaf>``."""
    return run_dir.root.parent.parent.parent / INDEX_DIR


def _parse_time(value: Any) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(str(value))
    except ValueError:
        return None


def entry_from_manifest(manifest: dict[str, Any], *, group: str) -> dict[str, Any]:
    """The index entry of one run from its manifest (as ``collection`` writes it)."""
    key = manifest["run_key"]
    cost = manifest.get("cost") or {}
    batches = []
    starts, ends = [], []
    for b in manifest.get("batches") or []:
        created, ended = _parse_time(b.get("created_at")), _parse_time(b.get("ended_at"))
        seconds = (ended - created).total_seconds() if created and ended else None
        batches.append({"id": b["batch_id"], "model": b.get("model"), "seconds": seconds})
        if created:
            starts.append(created)
        if ended:
            ends.append(ended)
    models = manifest.get("models") or sorted({b["model"] for b in batches if b["model"]})
    return {
        "v": ENTRY_VERSION,
        "dag_id": key["dag_id"],
        "run_id": key["run_id"],
        "task_id": key["task_id"],
        "map_index": key.get("map_index", -1),
        "group": group,
        "provider": manifest["provider"],
        "models": models,
        "rows": manifest.get("inputs", 0),
        "succeeded": manifest.get("succeeded", 0),
        "errored": manifest.get("unresolved", 0),
        "rejected": manifest.get("rejected", 0),
        "dead_letter": manifest.get("dead_letter", 0),
        "attempts": manifest.get("attempts", 0),
        "finished": bool(manifest.get("finished")),
        "batch_usd": cost.get("batch_usd", 0.0),
        "standard_usd": cost.get("standard_usd", 0.0),
        "savings_usd": cost.get("savings_usd", 0.0),
        "unpriced_models": cost.get("unpriced_models", []),
        "tags": manifest.get("tags") or {},
        "started_at": min(starts).isoformat() if starts else None,
        "completed_at": max(ends).isoformat() if ends else manifest.get("written_at"),
        "completion_s": (max(ends) - min(starts)).total_seconds() if starts and ends else None,
        "batches": batches,
        "written_at": manifest.get("written_at"),
    }


def write_entry(root: Any, digest: str, entry: dict[str, Any]) -> Any:
    """Write ``entry`` as a new version for ``digest`` under index ``root`` (one PUT, no listing:
    readers drop the versions it supersedes)."""
    path = root / ENTRIES_DIR / f"{digest}.{time.time_ns():020d}.json"
    write_json_atomic(path, entry)
    return path


def record_run(run_dir: RunDirectory, manifest: dict[str, Any]) -> None:
    """Update the run index after a manifest was written. A failure is a warning, never an error."""
    try:
        leaf = run_dir.root.name.split(".map-")[0]
        digest = _digest(manifest)
        write_entry(index_root(run_dir), digest, entry_from_manifest(manifest, group=leaf))
    except Exception as exc:
        log.warning("Could not update the run index for %s (the run itself is fine): %s", run_dir, exc)


def _digest(manifest: dict[str, Any]) -> str:
    from batch_provider.core.ledger import RunKey

    return RunKey.model_validate(manifest["run_key"]).digest()


def _split_name(name: str) -> tuple[str, str] | None:
    parts = name.split(".")
    if len(parts) != 3 or parts[2] != "json":
        return None
    return parts[0], parts[1]


class RunIndexReader:
    """Reads one index root, keeping entries in memory between calls.

    Each :meth:`entries` call lists ``runs/`` once and opens only the entry files it has not
    seen; the first call starts from ``segment.json``.
    """

    def __init__(self, root: Any):
        self.root = root
        self._by_name: dict[str, dict[str, Any]] = {}
        self._latest: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._segment_loaded = False
        self._segment_written = 0.0
        self.version = 0
        """Changes whenever the entries change, unique across readers of this process: callers may
        cache what they derive from the entries under it."""

    def _names(self) -> list[str]:
        entries = self.root / ENTRIES_DIR
        if isinstance(entries, pathlib.Path):
            try:
                return [e.name for e in _scandir(entries)]
            except FileNotFoundError:
                return []
        if not entries.exists():
            return []
        return [p.name for p in entries.iterdir()]

    def _load_segment(self) -> None:
        self._segment_loaded = True
        segment = self.root / SEGMENT
        try:
            if segment.exists():
                self._by_name.update(read_json(segment).get("entries", {}))
        except Exception as exc:
            log.warning("Ignoring unreadable run index segment %s: %s", segment, exc)

    def entries(self) -> list[dict[str, Any]]:
        """The latest entry of every run folder in this index (safe to call from several threads)."""
        with self._lock:
            return self._refresh()

    def _refresh(self) -> list[dict[str, Any]]:
        if not self._segment_loaded:
            self._load_segment()
        names = [n for n in self._names() if n.endswith(".json")]
        present = set(names)
        gone = [n for n in self._by_name if n not in present]
        for name in gone:
            del self._by_name[name]
        new = 0
        for name in names:
            if name in self._by_name:
                continue
            try:
                with (self.root / ENTRIES_DIR / name).open("rb") as fh:
                    data = json.loads(fh.read())
            except (FileNotFoundError, ValueError):
                continue  # replaced by a newer version between the listing and the read
            if not (isinstance(data, dict) and {"dag_id", "run_id", "provider"} <= data.keys()):
                log.warning("Ignoring run index entry %s: not an entry this version writes", name)
                continue
            self._by_name[name] = data
            new += 1
        if new and (new >= SEGMENT_AFTER_NEW or time.monotonic() - self._segment_written > SEGMENT_EVERY_S):
            self._write_segment()
        if new or gone or not self.version:
            latest, superseded = _latest(self._by_name)
            self._drop(superseded)
            self._latest = list(latest.values())
            self.version = next(_VERSIONS)
        return self._latest

    def _drop(self, names: list[str]) -> None:
        """Delete entry versions a newer one of the same run supersedes (best-effort)."""
        for name in names:
            try:
                (self.root / ENTRIES_DIR / name).unlink()
                del self._by_name[name]
            except Exception as exc:
                log.debug("Could not delete superseded index entry %s: %s", name, exc)

    @property
    def latest(self) -> list[dict[str, Any]]:
        """What the last :meth:`entries` call returned (no listing)."""
        return self._latest

    def _write_segment(self) -> None:
        self._segment_written = time.monotonic()
        try:
            write_json_atomic(self.root / SEGMENT, {"v": ENTRY_VERSION, "entries": self._by_name})
        except Exception as exc:
            log.warning("Could not write the run index segment under %s: %s", self.root, exc)


def _scandir(path: pathlib.Path) -> Iterable[Any]:
    import os

    with os.scandir(path) as it:
        return list(it)


def _latest(by_name: dict[str, dict[str, Any]]) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """The highest version of each digest, and the names of the versions it supersedes."""
    best: dict[str, tuple[str, str, dict[str, Any]]] = {}
    superseded: list[str] = []
    for name, entry in by_name.items():
        split = _split_name(name)
        if split is None:
            continue
        digest, version = split
        if digest not in best:
            best[digest] = (version, name, entry)
        elif version > best[digest][0]:
            superseded.append(best[digest][1])
            best[digest] = (version, name, entry)
        else:
            superseded.append(name)
    return {digest: entry for digest, (_, _, entry) in best.items()}, superseded
