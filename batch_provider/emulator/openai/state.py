"""OpenAI batch state machine.

A batch is a small persisted record plus a *plan* computed once from its input file
(:mod:`.plan`): validation errors, request count, which requests fail and why, and prefix
sums of token usage. Create bodies are checked by :mod:`.create`; output and error files are
registered and written by :mod:`.output_files`. Status, counts, usage and output files are
pure functions of (record, plan, emulated now)::

    t_v = created_at + validating_seconds          validating → in_progress (or → failed)
    t_p = t_v + processing_seconds + n * per_request_seconds
                                                   in_progress → finalizing; requests finish
                                                   evenly, so request_counts rise over time
    t_p + finalizing_seconds                       finalizing → completed
    expires_at (created_at + 24h)                  in_progress → expired if t_p >= expires_at
                                                   (the ``expire`` fault stretches t_p past it)
    cancel at c                                    → cancelling at c → cancelled at c + cancel_seconds;
                                                   the requests finished by c keep their results

With ``outputs_at_finalize`` the first view after ``t_p`` starts writing the output files in the
background and the batch stays ``finalizing`` until they are written; it is ``completed`` from
``max(t_p + finalizing_seconds, outputs_ready_at)``.

Invariants:
- The plan is built once per batch, in a worker thread started by its first read or a stats read
  (create does not wait for it); every read of a batch awaits it; a batch created by this process
  counts in the stats exactly once, when its plan is built.
- Processing order is file order: "done by time t" is always a prefix of the requests, so counts
  and usage at any t are O(log n) from the plan.
- Each custom_id ends in exactly one of output file, error file, or (expired/cancelled and
  unrun, when those lines are turned off) nowhere.
- ``request_counts.total`` is 0 while validating and for failed batches.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import shutil
from collections.abc import Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from .. import registry
from ..errors import ApiError, not_found
from ..faults import BatchFaults
from ..registry import BatchRegistry
from ..store import new_id
from .batch import OpenAIBatch
from .create import check_create
from .output_files import OutputFiles
from .plan import Plan, build_plan, synthetic_plan

if TYPE_CHECKING:
    from ..store import Store

log = logging.getLogger(__name__)
T = TypeVar("T")

TERMINAL = ("completed", "failed", "expired", "cancelled")


class OpenAIBatches(BatchRegistry[OpenAIBatch]):
    """Every OpenAI batch of one emulator, persisted under ``<data dir>/openai``."""

    PROVIDER = "openai"
    RECORD_TYPE = OpenAIBatch
    META_GLOB = "batch_*.json"
    INPUT_SUFFIX = ".input.jsonl"

    def __init__(self, store: Store) -> None:
        super().__init__(store)
        self.plans: dict[str, Plan] = {}
        self._plan_tasks: dict[str, asyncio.Future[Plan]] = {}
        """Plans being built, by batch id; a task leaves this once its plan is in ``plans``."""
        self._uncounted: set[str] = set()
        """Batches created by this process whose plan is not yet counted in the stats."""
        self.output_files = OutputFiles(self)

    def output_owner(self, file_id: str) -> OpenAIBatch | None:
        bid = self.output_files.owners.get(file_id)
        return self.records.get(bid) if bid and bid in self.plans else None

    def clear(self) -> None:
        super().clear()
        self.plans.clear()
        self._plan_tasks.clear()
        self._uncounted.clear()
        self.output_files.clear()

    async def settle(self, *, outputs: bool = False) -> None:
        """Build every plan not built yet and wait for it (and, with ``outputs``, for every file being
        written in the background), so that counters include them. Failures are left to their
        readers."""
        for batch_id in list(self._uncounted):
            rec = self.records.get(batch_id)
            if rec is not None and batch_id not in self.plans:
                self._start_plan(rec)
        pending = [*self._plan_tasks.values(), *(self.output_files.writing.values() if outputs else ())]
        if pending:
            await asyncio.wait(pending)

    # ------------------------------------------------------------------ create / plan

    async def create(self, body: Any) -> OpenAIBatch:
        req = check_create(body, self.cfg)
        faults = self.store.faults.batch_defaults.merged(req.faults)
        now = self.store.clock.now()
        rec = OpenAIBatch(
            id=new_id("batch_"),
            endpoint=req.endpoint,
            input_file_id=req.input_file_id,
            completion_window="24h",
            metadata=req.metadata,
            created_at=now,
            expires_at=now + self.cfg.completion_window_seconds,
            faults=faults.to_json(),
            output_ttl=req.output_ttl,
            seq=self.next_seq(),
        )
        src = self.store.files.get(rec.input_file_id, now)
        if src is None:
            rec.input_missing = True
        else:
            src = await self.store.files.ready(src)
            await asyncio.to_thread(_link_or_copy, self.store.files.path(src.id), self.input_path(rec.id))
        self.add(rec)
        # Validation runs after the answer, as at OpenAI: it starts on the batch's first read (or
        # a stats read), so a client uploading many files does not share the CPU with it.
        self._uncounted.add(rec.id)
        return rec

    async def created_view(self, rec: OpenAIBatch) -> dict[str, Any]:
        """The create answer: the batch as created. While ``validating`` the view does not depend on
        the plan, so it is not awaited (unless validation takes no time)."""
        if rec.created_at < self.timeline(rec, _NO_PLAN)[0]:
            return self.view(rec, _NO_PLAN, rec.created_at)
        return self.view(rec, await self.plan(rec), rec.created_at)

    def create_synthetic(self, n: int, text_bytes: int) -> OpenAIBatch:
        """A batch that is already completed, with ``n`` generated output lines (see README)."""
        now = self.store.clock.now()
        rec = OpenAIBatch(
            id=new_id("batch_"),
            endpoint="/v1/chat/completions",
            input_file_id="file-synthetic",
            completion_window="24h",
            metadata={"emu_synthetic": "true"},
            created_at=now,
            expires_at=now + self.cfg.completion_window_seconds,
            faults=BatchFaults().to_json(),
            output_ttl=self.cfg.file_ttl_seconds,
            seq=self.next_seq(),
            synthetic_text_bytes=text_bytes,
            synthetic_n=n,
        )
        self.add(rec)
        return rec

    async def plan(self, rec: OpenAIBatch) -> Plan:
        plan = self.plans.get(rec.id)
        if plan is not None:
            return plan
        if rec.synthetic_text_bytes is not None:
            plan = synthetic_plan(rec.synthetic_n, rec.synthetic_text_bytes)
            self.plans[rec.id] = plan
            return plan
        return await asyncio.shield(self._start_plan(rec))

    def _start_plan(self, rec: OpenAIBatch) -> asyncio.Future[Plan]:
        """The task building ``rec``'s plan (started once; a failed build is retried by the next read)."""
        task = self._plan_tasks.get(rec.id)
        if task is None:
            task = self._plan_tasks[rec.id] = self.background(self._run_plan(rec))
        return task

    def background(self, work: Coroutine[Any, Any, T]) -> asyncio.Future[T]:
        """Start ``work`` as a task; a failure is logged and raised to whoever awaits the task."""
        task = asyncio.ensure_future(work)
        task.add_done_callback(_observe)
        return task

    async def _run_plan(self, rec: OpenAIBatch) -> Plan:
        """Build the plan in a worker thread, then publish it: into ``plans`` and, the first time for
        a batch created by this process, into the stats (so each plan is counted exactly once)."""
        try:
            plan = await asyncio.to_thread(self._build_plan, rec)
        finally:
            self._plan_tasks.pop(rec.id, None)
        if self.records.get(rec.id) is rec:  # else the batch was reset away meanwhile
            self.plans[rec.id] = plan
            if rec.id in self._uncounted:
                self._uncounted.discard(rec.id)
                self.store.stats.count_plan(plan)
        return plan

    def _build_plan(self, rec: OpenAIBatch) -> Plan:
        return build_plan(
            self.cfg,
            self.input_path(rec.id),
            endpoint=rec.endpoint,
            input_file_id=rec.input_file_id,
            faults=BatchFaults.from_json(rec.faults),
            input_missing=rec.input_missing,
            item_code=self.store.item_codes("openai", rec.seq),
        )

    # ------------------------------------------------------------------ read

    def get(self, batch_id: str) -> OpenAIBatch:
        rec = self.records.get(batch_id)
        if rec is None:
            raise not_found(f"No batch found with id '{batch_id}'.", "openai")
        return rec

    def timeline(self, rec: OpenAIBatch, plan: Plan) -> tuple[float, float]:
        """(t_v, t_p): end of validation, end of processing (inf when it can never finish)."""
        cfg = self.cfg
        if rec.synthetic_text_bytes is not None:
            return rec.created_at, rec.created_at
        t_v = rec.created_at + cfg.validating_seconds
        if plan.faults.expire is not None:
            return t_v, math.inf
        return t_v, t_v + cfg.processing_seconds + plan.n * cfg.per_request_seconds

    def done_at(self, rec: OpenAIBatch, plan: Plan, t: float) -> int:
        t_v, t_p = self.timeline(rec, plan)
        if t <= t_v or plan.n == 0:
            return 0
        if plan.faults.expire is not None:
            span = max(rec.expires_at - t_v, 1e-9)
            return min(plan.n, math.floor(plan.faults.expire * plan.n * min(1.0, (t - t_v) / span)))
        return min(plan.n, math.floor(plan.n * (t - t_v) / max(t_p - t_v, 1e-9)))

    def view(self, rec: OpenAIBatch, plan: Plan, now: float) -> dict[str, Any]:
        """The API Batch object at emulated time ``now`` (registers output files once terminal)."""
        cfg = self.cfg
        t_v, t_p = self.timeline(rec, plan)
        t_fin = t_p + (cfg.finalizing_seconds if rec.synthetic_text_bytes is None else 0.0)
        ts: dict[str, float | None] = dict.fromkeys(
            (
                "in_progress_at",
                "finalizing_at",
                "completed_at",
                "failed_at",
                "expired_at",
                "cancelling_at",
                "cancelled_at",
            )
        )
        errors = None
        c = rec.cancel_at
        validated = False
        if c is not None:
            ts["cancelling_at"] = c
            status = "cancelling" if now < c + cfg.cancel_seconds else "cancelled"
            if status == "cancelled":
                ts["cancelled_at"] = c + cfg.cancel_seconds
            validated = c >= t_v and not plan.errors
            if validated:
                ts["in_progress_at"] = t_v
                if c >= t_p:
                    ts["finalizing_at"] = t_p
            done = self.done_at(rec, plan, min(c, t_p)) if validated else 0
        elif now < t_v:
            status, done = "validating", 0
        elif plan.errors:
            status, done = "failed", 0
            ts["failed_at"] = t_v
            errors = {"object": "list", "data": plan.errors}
        else:
            validated = True
            ts["in_progress_at"] = t_v
            if t_p >= rec.expires_at and now >= rec.expires_at:
                status, done = "expired", self.done_at(rec, plan, rec.expires_at)
                ts["expired_at"] = rec.expires_at
            elif now < t_p:
                status, done = "in_progress", self.done_at(rec, plan, now)
            else:
                ts["finalizing_at"] = t_p
                done = plan.n
                if now < t_fin:
                    status = "finalizing"
                else:
                    status = "completed"
                    ts["completed_at"] = t_fin
        failed = plan.failed_before(done) if validated else 0
        counts = {"total": plan.n if validated else 0, "completed": done - failed, "failed": failed}
        if status == "expired" and cfg.expired_unrun_count_failed:
            counts["failed"] += plan.n - done
        usage = None
        if validated:
            i, o = plan.in_prefix[done], plan.out_prefix[done]
            usage = {
                "input_tokens": i,
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": o,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": i + o,
            }
        if status in ("finalizing", "completed") and c is None and self.output_files.writes_at_finalize(rec):
            self.output_files.register(rec, plan, "completed", done, failed, t_fin)
            if rec.outputs_ready_at is None:
                status, ts["completed_at"] = "finalizing", None
            elif status == "completed":
                ts["completed_at"] = max(t_fin, rec.outputs_ready_at)
        output_file_id = error_file_id = None
        if status in ("completed", "expired", "cancelled") and validated:
            ended = ts["completed_at"] or ts["expired_at"] or ts["cancelled_at"] or now
            output_file_id, error_file_id = self.output_files.register(rec, plan, status, done, failed, ended)
        body: dict[str, Any] = {
            "id": rec.id,
            "object": "batch",
            "endpoint": rec.endpoint,
            "model": plan.model if validated else None,
            "errors": errors,
            "input_file_id": rec.input_file_id,
            "completion_window": rec.completion_window,
            "status": status,
            "output_file_id": output_file_id,
            "error_file_id": error_file_id,
            "created_at": int(rec.created_at),
            "expires_at": int(rec.expires_at),
        }
        for k, v in ts.items():
            body[k] = None if v is None else int(v)
        body["request_counts"] = counts
        body["usage"] = usage
        body["metadata"] = rec.metadata
        return body

    # ------------------------------------------------------------------ mutate / list

    async def cancel(self, rec: OpenAIBatch) -> dict[str, Any]:
        plan = await self.plan(rec)
        now = self.store.clock.now()
        current = self.view(rec, plan, now)
        if current["status"] in TERMINAL:
            raise ApiError(400, f"Cannot cancel a batch with status '{current['status']}'.")
        if rec.cancel_at is None:
            rec.cancel_at = now
            self.save(rec)
        return self.view(rec, plan, now)


_NO_PLAN = Plan()
"""Stands in for a plan where a view does not depend on it (a batch still validating)."""


def _observe(task: asyncio.Future[Any]) -> None:
    """Mark a background task's failure as seen: whoever awaits the task gets the exception."""
    if not task.cancelled() and task.exception() is not None:
        log.warning("background task failed: %r", task.exception())


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def attach(store: Store) -> OpenAIBatches:
    """The OpenAI batches of ``store`` (``store.openai``), cleared by ``/_emu/reset``."""
    return registry.attach(store, OpenAIBatches)
