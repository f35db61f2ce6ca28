"""Shared state: files, counters, persistence, and the container the HTTP layer talks to.

Layout of the data directory (``--data-dir``, or a temporary directory)::

    clock.json                      last emulated time seen (a restart resumes from it)
    resends.jsonl                   transient item errors by request content (see resends.py)
    files/<id>.json, files/<id>.bin file metadata and contents (contents are never held in memory)
    openai/<batch>.json             OpenAI batch record; openai/<batch>.input.jsonl its input copy
    anthropic/<batch>.json          Anthropic batch record; anthropic/<batch>.requests.jsonl its requests
    bedrock/<job>.json              Bedrock job record; bedrock/<job>.records.jsonl its input records
    gemini/<batch>.batch.json       Gemini batch record; gemini/<batch>.requests.jsonl its requests

Each provider folder is one :class:`~.registry.BatchRegistry`.

Invariants:
- Records are small JSON documents rewritten whole when they change; derived state (status,
  counts, plans) is recomputed from them and from the clock, so a restart loses nothing.
- Output files of a batch are *pending* until first read (or until the batch writes them in the
  background, ``outputs_at_finalize``): their content is written once, in a worker thread, then
  served from disk like any upload.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .clock import Clock
from .config import EmulatorConfig
from .faults import ServerFaults
from .resends import ItemCode, ResendHistory


def new_id(prefix: str, n: int = 24) -> str:
    alphabet = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
    return prefix + "".join(secrets.choice(alphabet) for _ in range(n))


def write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, separators=(",", ":")))
    os.replace(tmp, path)


@dataclass
class FileRecord:
    id: str
    bytes: int
    created_at: int
    filename: str
    purpose: str
    expires_at: int | None = None
    seq: int = 0
    pending: bool = False
    synthetic_lines: int = 0
    """> 0: content generated on the fly (``/_emu/synthetic``), never stored; see openai/state.py."""
    synthetic_text_bytes: int = 0

    def to_api(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "file",
            "bytes": self.bytes,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "status_details": None,
        }


class FileStore:
    """Files by id, in creation order. Pending files get their content from a producer."""

    def __init__(self, root: Path) -> None:
        self.dir = root / "files"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.records: dict[str, FileRecord] = {}
        self._producers: dict[str, Callable[[Path], None]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._seq = 0
        loaded = []
        for meta in self.dir.glob("*.json"):
            try:
                loaded.append(FileRecord(**json.loads(meta.read_text())))
            except (ValueError, TypeError):
                continue
        for rec in sorted(loaded, key=lambda r: (r.seq, r.created_at)):
            if rec.synthetic_lines or (self.dir / f"{rec.id}.bin").exists():
                self.records[rec.id] = rec
                self._seq = max(self._seq, rec.seq)

    def path(self, file_id: str) -> Path:
        return self.dir / f"{file_id}.bin"

    def _save(self, rec: FileRecord) -> None:
        write_json(self.dir / f"{rec.id}.json", asdict(rec))

    def add(self, rec: FileRecord) -> FileRecord:
        self._seq += 1
        rec.seq = self._seq
        self.records[rec.id] = rec
        if not rec.pending:
            self._save(rec)
        return rec

    def add_pending(self, rec: FileRecord, producer: Callable[[Path], None]) -> None:
        if rec.id in self.records:
            return
        rec.pending = True
        self._producers[rec.id] = producer
        self.add(rec)

    def get(self, file_id: str, now: float) -> FileRecord | None:
        rec = self.records.get(file_id)
        if rec is None or (rec.expires_at is not None and now >= rec.expires_at):
            return None
        return rec

    async def ready(self, rec: FileRecord) -> FileRecord:
        """Make sure a pending file's content exists (written once, off the event loop)."""
        if not rec.pending:
            return rec
        lock = self._locks.setdefault(rec.id, asyncio.Lock())
        async with lock:
            if rec.pending:
                producer = self._producers[rec.id]
                target = self.path(rec.id)
                await asyncio.to_thread(producer, target)
                rec.bytes = target.stat().st_size
                rec.pending = False
                self._producers.pop(rec.id, None)
                self._save(rec)
        return rec

    def delete(self, file_id: str) -> bool:
        rec = self.records.pop(file_id, None)
        if rec is None:
            return False
        self._producers.pop(file_id, None)
        for p in (self.path(file_id), self.dir / f"{file_id}.json"):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
        return True

    def clear(self) -> None:
        for fid in list(self.records):
            self.delete(fid)
        self._seq = 0


class Stats:
    """Counters for ``GET /_emu/stats``."""

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self.requests: Counter[str] = Counter()
        self.faults: Counter[str] = Counter()
        self.batches_created: Counter[str] = Counter()
        self.files_uploaded = 0

    def count_plan(self, plan: Any) -> None:
        """Count the faults a new batch's plan injects (item errors, batch directives)."""
        self.faults.update(plan.injected)
        f = plan.faults
        for name, on in (
            ("batch_expire", f.expire is not None),
            ("batch_shuffle", f.shuffle),
            ("batch_fail_validation", bool(f.fail_validation and getattr(plan, "errors", None))),
        ):
            if on:
                self.faults[name] += 1

    def to_json(self) -> dict[str, Any]:
        return {
            "batches_created": {"openai": 0, "anthropic": 0, **self.batches_created},
            "requests": dict(self.requests),
            "requests_total": sum(self.requests.values()),
            "faults": dict(self.faults),
            "faults_total": sum(self.faults.values()),
            "files_uploaded": self.files_uploaded,
        }


class Store:
    """Everything the routers share. Provider state machines hang off it as ``store.<provider>``
    once :func:`.registry.attach` adds them (the app attaches every provider that joined
    :mod:`.providers`); the store itself imports no provider."""

    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config
        self._tmp: str | None = None
        if config.data_dir:
            self.root = Path(config.data_dir)
        else:
            self._tmp = tempfile.mkdtemp(prefix="batch-emulator-")
            self.root = Path(self._tmp)
        self.root.mkdir(parents=True, exist_ok=True)
        saved = None
        clock_file = self.root / "clock.json"
        if clock_file.exists():
            with contextlib.suppress(ValueError, KeyError):
                saved = float(json.loads(clock_file.read_text())["now"])
        self.clock = Clock(config.time_factor, start=saved)
        self.files = FileStore(self.root)
        self.stats = Stats()
        self.faults = ServerFaults(config.seed)
        self.faults.set(self._fault_defaults())
        self.resends = ResendHistory(self.root)

    def _fault_defaults(self) -> dict[str, Any]:
        c = self.config
        spec: dict[str, Any] = {
            "fault_rate": c.fault_rate,
            "fault_kinds": c.fault_kinds,
            "retry_after": c.retry_after,
            "batch_faults": c.batch_faults,
            "item_recovery": c.item_recovery,
        }
        if c.faults_json:
            spec.update(json.loads(c.faults_json))
        return spec

    def item_codes(self, provider: str, seq: int) -> ItemCode:
        """How the requests of batch ``seq`` of ``provider`` get their injected item errors, given
        the transient errors their contents met before (see ``resends.py``)."""
        return self.resends.for_batch(provider, seq, self.config.seed, self.faults.item_recovery)

    def save_clock(self) -> None:
        write_json(self.root / "clock.json", {"now": self.clock.now()})

    def reset(self) -> None:
        """Drop every batch, file, counter and server-wide fault; the clock keeps running."""
        self.files.clear()
        self.stats.clear()
        self.resends.clear()
        self.faults.set(self._fault_defaults())

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.save_clock()
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)
