"""OpenAI batch output and error files as records of the Files store.

A batch's (output, error) file ids are registered once: at its first terminal view or, with
``outputs_at_finalize``, when its processing is over. A registered file is *pending*: its lines are
written from the batch's input copy (:func:`.outputs.write_file`) on its first read, in a
worker thread. With ``outputs_at_finalize`` the writing starts at once, in the background, and the
batch's ``outputs_ready_at`` is stamped when both files are written. A synthetic batch's file is
generated on the fly when read, never written.

Invariants:
- A file id is derived from the batch id and the kind (``output`` / ``error``); a kind without
  lines has no file (None).
- Registration happens once per batch: the arguments of the first call fix the files' contents.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from .. import outputs
from ..store import FileRecord
from .outputs import OutputJob, synthetic_line_length, write_file

if TYPE_CHECKING:
    from ..config import EmulatorConfig
    from ..store import Store
    from .batch import OpenAIBatch
    from .plan import Plan

T = TypeVar("T")


class Batches(Protocol):
    """What the output files use of the OpenAI batch registry (:class:`.state.OpenAIBatches`)."""

    store: Store
    cfg: EmulatorConfig
    records: dict[str, OpenAIBatch]

    def background(self, work: Coroutine[Any, Any, T]) -> asyncio.Future[T]: ...

    def save(self, rec: OpenAIBatch) -> None: ...

    def timeline(self, rec: OpenAIBatch, plan: Plan) -> tuple[float, float]: ...

    def input_path(self, batch_id: str) -> Path: ...


class OutputFiles:
    """The output and error files of the batches of one :class:`.state.OpenAIBatches`."""

    def __init__(self, batches: Batches) -> None:
        self.batches = batches
        self.store = batches.store
        self.cfg = batches.cfg
        self.owners: dict[str, str] = {}
        """output/error file id → batch id, for per-batch download faults."""
        self.ids: dict[str, tuple[str | None, str | None]] = {}
        """batch id → (output file id, error file id), once registered."""
        self.writing: dict[str, asyncio.Future[None]] = {}
        """Batches whose output/error files are being written in the background (outputs_at_finalize)."""

    def clear(self) -> None:
        self.writing.clear()
        self.owners.clear()
        self.ids.clear()

    def writes_at_finalize(self, rec: OpenAIBatch) -> bool:
        return self.cfg.outputs_at_finalize and rec.synthetic_text_bytes is None

    def register(
        self, rec: OpenAIBatch, plan: Plan, status: str, done: int, failed: int, ended: float
    ) -> tuple[str | None, str | None]:
        """The batch's (output, error) file ids, registered at its first terminal view (or, with
        ``outputs_at_finalize``, at the end of processing, when their writing starts)."""
        files = self.ids.get(rec.id)
        if files is None:
            files = self.ids[rec.id] = self._add_records(rec, plan, status, done, failed, ended)
        if self.writes_at_finalize(rec) and rec.outputs_ready_at is None and rec.id not in self.writing:
            self.writing[rec.id] = self.batches.background(self._write_files(rec, files))
        return files

    async def _write_files(self, rec: OpenAIBatch, files: tuple[str | None, str | None]) -> None:
        """Write the batch's pending files (each in a worker thread), then stamp ``outputs_ready_at``."""
        try:
            for fid in files:
                frec = self.store.files.records.get(fid) if fid else None
                if frec is not None:
                    await self.store.files.ready(frec)
        finally:
            self.writing.pop(rec.id, None)
        if self.batches.records.get(rec.id) is rec:
            rec.outputs_ready_at = self.store.clock.now()
            self.batches.save(rec)

    def _add_records(
        self, rec: OpenAIBatch, plan: Plan, status: str, done: int, failed: int, ended: float
    ) -> tuple[str | None, str | None]:
        unrun = plan.n - done
        err_lines = failed + (
            unrun
            if status == "expired" or (status == "cancelled" and self.cfg.cancelled_unrun_error_lines)
            else 0
        )
        ids: list[str | None] = []
        for kind, count in (("output", done - failed), ("error", err_lines)):
            if count <= 0:
                ids.append(None)
                continue
            fid = "file-" + outputs.short_id(outputs.body_hash(0, f"{rec.id}:{kind}"))
            self.owners[fid] = rec.id
            if fid not in self.store.files.records and rec.synthetic_text_bytes is not None:
                self.store.files.add(
                    FileRecord(
                        id=fid,
                        bytes=count * synthetic_line_length(rec.synthetic_text_bytes),
                        created_at=int(ended),
                        filename=f"{rec.id}_{kind}.jsonl",
                        purpose="batch_output",
                        expires_at=int(ended + rec.output_ttl),
                        synthetic_lines=count,
                        synthetic_text_bytes=rec.synthetic_text_bytes,
                    )
                )
            elif fid not in self.store.files.records:
                created = int(ended)
                self.store.files.add_pending(
                    FileRecord(
                        id=fid,
                        bytes=0,
                        created_at=created,
                        filename=f"{rec.id}_{kind}.jsonl",
                        purpose="batch_output",
                        expires_at=int(created + rec.output_ttl),
                    ),
                    lambda target, k=kind: self._write_outputs(rec, plan, status, done, k, target),
                )
            ids.append(fid)
        return ids[0], ids[1]

    def _write_outputs(
        self, rec: OpenAIBatch, plan: Plan, status: str, done: int, kind: str, target: Path
    ) -> None:
        cfg = self.cfg
        t_v, t_p = self.batches.timeline(rec, plan)
        end = t_p if math.isfinite(t_p) else rec.expires_at
        unrun_error = None
        if status == "expired":
            unrun_error = (
                "batch_expired",
                "This request could not be executed before the completion window expired.",
            )
        elif status == "cancelled" and cfg.cancelled_unrun_error_lines:
            unrun_error = (
                "batch_cancelled",
                "This request was not executed because the batch was cancelled.",
            )
        job = OutputJob(
            batch_id=rec.id,
            endpoint=rec.endpoint,
            kind=kind,
            done=done,
            fail=plan.fail,
            unrun_error=unrun_error,
            t_v=t_v,
            step=(end - t_v) / max(plan.n, 1),
            seed=cfg.seed,
            embedding_dim=cfg.embedding_dim,
            shuffle=plan.faults.shuffle or cfg.shuffle_results,
            faults=plan.faults,
        )
        write_file(job, self.batches.input_path(rec.id), target)
