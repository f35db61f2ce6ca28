"""Gemini batch mode state machine, persisted under ``<data dir>/gemini``.

A batch's requests are copied and planned by :mod:`.input`; what it answers comes from
:mod:`.outputs`.

Timeline of a batch, derived from its record and the emulated clock (``t0`` = createTime)::

    BATCH_STATE_PENDING   [t0, t_run = t0 + validating_seconds)   → FAILED here when the input is refused
    BATCH_STATE_RUNNING   [t_run, t_end = t_run + processing_seconds + n * per_request_seconds) → SUCCEEDED
    expiry                t0 + expire_seconds (48 h): still running → EXPIRED with the requests done so far
    cancel at c           RUNNING until c + cancel_seconds (or t_end if sooner), then CANCELLED with
                          the requests done by c

Requests finish evenly in input order while RUNNING, so ``batchStats`` rise on every get.

Invariants:
- The API shape is a long-running operation ``{"name": "batches/<id>", "metadata": {GenerateContentBatch},
  "done", "response" | "error"}`` with ``BATCH_STATE_*`` states, as ``google-genai`` parses it.
- Outputs are derived, never stored: inline batches answer ``output.inlinedResponses`` (request
  order, ``metadata`` echoed); file batches answer ``output.responsesFile`` (``files/batch-<id>``),
  whose lines ``{"key", "response" | "error"}`` are generated while streamed.
- Partial outputs of EXPIRED and CANCELLED batches hold only the finished requests.
- Item errors and a failed batch's ``error`` are ``google.rpc.Status`` objects (gRPC ``code``,
  ``message``), as the SDK's ``JobError`` reads them.
- Fault directives: the first request's key (``emu-expire-…``, ``emu-shuffle-…``, ``emu-drop-…``,
  ``emu-errors20-…``), an ``emu_faults=<OpenAI directive list>`` token in ``displayName``, the
  server-wide ``batch_faults``, and per-request ``emu-fail<code>-`` keys.
- A batch counts in ``/_emu/stats`` ``batches_created["gemini"]`` once it exists.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from .. import models, registry
from ..clock import rfc3339
from ..faults import BatchFaults
from ..registry import BatchRecord, BatchRegistry
from ..settings import FaceSettings
from . import input as gemini_input
from . import outputs as gemini_outputs
from .files import GeminiError, GeminiFiles, invalid, new_name, not_found
from .input import Plan
from .outputs import Results

if TYPE_CHECKING:
    from ..store import Store

T = TypeVar("T")


class PlannedRecord(BatchRecord, Protocol):
    """A batch in the Gemini request format (a Gemini batch, a Vertex job)."""

    faults: dict[str, Any]
    created_at: float


class _ExpirySettings(Protocol):
    expire_seconds: float


P = TypeVar("P", bound=PlannedRecord)


class PlannedBatches(BatchRegistry[P]):
    """The plan and timeline shared by Gemini batches and Vertex jobs: a batch's plan is built once
    from its input (``self.plans``, cleared with the records), its requests run from ``_t_run``
    (the subclass's queue) and end ``processing_seconds`` plus ``per_request_seconds`` each later,
    never when the batch is set to expire, and it expires ``expire_seconds`` after creation."""

    plans: dict[str, Plan]
    settings: _ExpirySettings

    def plan(self, rec: P) -> Plan:
        plan = self.plans.get(rec.id)
        if plan is None:
            faults = BatchFaults.from_json(rec.faults)
            item_code = self.store.item_codes(self.PROVIDER, rec.seq)
            plan = gemini_input.build_plan(self.input_path(rec.id), faults, self.cfg, item_code)
            self.plans[rec.id] = plan
        return plan

    def _t_run(self, rec: P) -> float:
        raise NotImplementedError

    def _t_end(self, rec: P, plan: Plan) -> float:
        if plan.faults.expire is not None:
            return math.inf
        return self._t_run(rec) + self.cfg.processing_seconds + plan.n * self.cfg.per_request_seconds

    def expires_at(self, rec: P) -> float:
        return rec.created_at + self.settings.expire_seconds

BATCH_TYPE = "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatch"
OUTPUT_TYPE = "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatchOutput"
TERMINAL = frozenset(
    {"BATCH_STATE_SUCCEEDED", "BATCH_STATE_FAILED", "BATCH_STATE_CANCELLED", "BATCH_STATE_EXPIRED"}
)


@dataclass
class GeminiSettings(FaceSettings):
    """Gemini knobs; change them at run time with ``POST /_emu/gemini``."""

    FACE = "gemini"

    expire_seconds: float = 48 * 3600.0
    inline_max_bytes: int = 20 * 1024 * 1024
    max_file_bytes: int = 2 * 1024**3
    display_name_max: int = 128
    file_ttl_seconds: float = 48 * 3600.0
    partial_results: bool = True
    """EXPIRED and CANCELLED batches keep the results of the requests finished in time."""
    list_inlined_responses: bool = False
    """List pages carry each batch's inlined responses (off: only ``get`` does, keeping pages small)."""


@dataclass
class GeminiBatch:
    id: str
    model: str
    display_name: str
    created_at: float
    source: str
    """``inline`` or ``file``."""
    input_file: str | None
    n: int
    faults: dict[str, Any]
    seq: int
    fail_message: str | None = None
    cancel_at: float | None = None
    downloads: int = 0

    @property
    def name(self) -> str:
        return f"batches/{self.id}"


@dataclass
class View:
    state: str
    done: int
    ended_at: float | None


class GeminiBatches(PlannedBatches[GeminiBatch]):
    """Every Gemini batch and file of one emulator, persisted under ``<data dir>/gemini``."""

    PROVIDER = "gemini"
    RECORD_TYPE = GeminiBatch
    META_GLOB = "*.batch.json"
    META_SUFFIX = ".batch.json"
    INPUT_SUFFIX = ".requests.jsonl"
    settings: GeminiSettings

    def __init__(self, store: Store) -> None:
        super().__init__(store)
        self.settings = GeminiSettings()
        self.files = GeminiFiles(self.dir, lambda: self.settings.file_ttl_seconds)
        self.plans: dict[str, Plan] = {}
        self._inline_cache: dict[tuple[str, int], list[dict[str, Any]]] = {}

    def forget(self, batch_id: str) -> None:
        super().forget(batch_id)
        self.plans.pop(batch_id, None)
        for key in [k for k in self._inline_cache if k[0] == batch_id]:
            self._inline_cache.pop(key, None)

    def clear(self) -> None:
        super().clear()
        self.plans.clear()
        self._inline_cache.clear()
        self.files.clear()
        self.settings.restore_defaults()

    # ------------------------------------------------------------------ create

    async def create(self, model: str, body: Any) -> GeminiBatch:
        req = gemini_input.check_create(body, self.settings.display_name_max, self.cfg.expire_done_fraction)
        if not models.serves(self.cfg, "gemini", model):
            raise not_found(models.gemini_message(model))
        seq = self.next_seq()
        rec = GeminiBatch(
            id=new_name(24),
            model=model if model.startswith("models/") else f"models/{model}",
            display_name=req.display_name,
            created_at=self.store.clock.now(),
            source="file" if req.file_name is not None else "inline",
            input_file=req.file_name,
            n=0,
            faults=self.store.faults.batch_defaults.merged(req.faults).to_json(),
            seq=seq,
        )
        path = self.input_path(rec.id)
        if req.file_name is None:
            if not isinstance(req.inline, list) or not req.inline:
                raise invalid("* batch.input_config.requests.requests: at least one request is required")
            try:
                rec.n = await asyncio.to_thread(gemini_input.write_inline, path, req.inline)
            except GeminiError:
                path.unlink(missing_ok=True)
                raise
        else:
            try:
                source_file = self.files.get(req.file_name, self.store.clock.now())
            except GeminiError:
                raise invalid(
                    f"* batch.input_config.file_name: file {req.file_name} does not exist"
                ) from None
            rec.n, rec.fail_message = await asyncio.to_thread(
                gemini_input.copy_file, self.files.path(source_file.id), path, req.file_name
            )
        if rec.fail_message is None and BatchFaults.from_json(rec.faults).fail_validation:
            rec.fail_message = (
                f"Validation failed (emulated fault: {BatchFaults.from_json(rec.faults).fail_validation})."
            )
        self.add(rec)
        self.store.stats.count_plan(await asyncio.to_thread(self.plan, rec))
        return rec

    # ------------------------------------------------------------------ time

    def get(self, name: str) -> GeminiBatch:
        rec = self.records.get(name.removeprefix("batches/"))
        if rec is None:
            raise not_found(f"Batch {name} not found.")
        return rec

    def _t_run(self, rec: GeminiBatch) -> float:
        return rec.created_at + self.cfg.validating_seconds + self.store.queue_delay.for_batch(rec.id)

    def done_at(self, rec: GeminiBatch, plan: Plan, t: float) -> int:
        t_run = self._t_run(rec)
        if t <= t_run or plan.n == 0:
            return 0
        if plan.faults.expire is not None:
            span = max(self.expires_at(rec) - t_run, 1e-9)
            return min(plan.n, math.floor(plan.faults.expire * plan.n * min(1.0, (t - t_run) / span)))
        t_end = self._t_end(rec, plan)
        return min(plan.n, math.floor(plan.n * (t - t_run) / max(t_end - t_run, 1e-9)))

    def view(self, rec: GeminiBatch, now: float) -> View:
        plan = self.plan(rec)
        t_run = self._t_run(rec)
        if rec.fail_message is not None:
            if now < t_run:
                return View("BATCH_STATE_PENDING", 0, None)
            return View("BATCH_STATE_FAILED", 0, t_run)
        t_end = self._t_end(rec, plan)
        expires = self.expires_at(rec)
        natural_end = min(t_end, expires)
        if rec.cancel_at is not None and rec.cancel_at < natural_end:
            end = min(rec.cancel_at + self.cfg.cancel_seconds, natural_end)
            if now >= end:
                return View("BATCH_STATE_CANCELLED", self.done_at(rec, plan, rec.cancel_at), end)
        if now >= natural_end:
            if t_end <= expires:
                return View("BATCH_STATE_SUCCEEDED", plan.n, t_end)
            return View("BATCH_STATE_EXPIRED", self.done_at(rec, plan, expires), expires)
        if now < t_run:
            return View("BATCH_STATE_PENDING", 0, None)
        return View("BATCH_STATE_RUNNING", self.done_at(rec, plan, now), None)

    # ------------------------------------------------------------------ API views

    def operation(self, rec: GeminiBatch, *, with_inlined: bool = True) -> dict[str, Any]:
        now = self.store.clock.now()
        view = self.view(rec, now)
        plan = self.plan(rec)
        ended = view.state in TERMINAL
        errors = plan.errors_before(view.done)
        kept = view.done if (view.state == "BATCH_STATE_SUCCEEDED" or self.settings.partial_results) else 0
        batch: dict[str, Any] = {
            "@type": BATCH_TYPE,
            "name": rec.name,
            "displayName": rec.display_name,
            "model": rec.model,
            "inputConfig": {"fileName": rec.input_file} if rec.input_file else {"requests": {}},
            "createTime": rfc3339(rec.created_at),
            "updateTime": rfc3339(view.ended_at or now),
            "state": view.state,
            "batchStats": {
                "requestCount": str(plan.n),
                "successfulRequestCount": str(view.done - errors),
                "failedRequestCount": str(errors),
                "pendingRequestCount": str(0 if ended else plan.n - view.done),
            },
        }
        if ended:
            batch["endTime"] = rfc3339(view.ended_at)
        operation: dict[str, Any] = {"name": rec.name, "metadata": batch, "done": ended}
        if view.state == "BATCH_STATE_FAILED":
            operation["error"] = {
                "code": 3,
                "message": rec.fail_message,
            }  # google.rpc.Status: INVALID_ARGUMENT
            return operation
        if ended:
            output: dict[str, Any]
            if rec.source == "file":
                output = {"responsesFile": f"files/batch-{rec.id}"}
            elif with_inlined:
                output = {"inlinedResponses": {"inlinedResponses": self.inlined(rec, kept)}}
            else:
                output = {}
            batch["output"] = output
            operation["response"] = {"@type": OUTPUT_TYPE, **output}
        return operation

    def _results(
        self, rec: GeminiBatch, done: int, render: Callable[[Iterator[dict[str, Any]], Results], T]
    ) -> T:
        """``render`` (a :mod:`.outputs` function) over the first ``done`` requests."""
        plan = self.plan(rec)
        shuffle = plan.faults.shuffle or self.cfg.shuffle_results
        results = Results(plan.fail, done, rec.model, self.cfg.seed, rec.id, shuffle, plan.faults)
        return render(gemini_input.read_entries(self.input_path(rec.id)), results)

    def inlined(self, rec: GeminiBatch, done: int) -> list[dict[str, Any]]:
        cached = self._inline_cache.get((rec.id, done))
        if cached is None:
            cached = self._results(rec, done, gemini_outputs.inlined_responses)
            self._inline_cache[(rec.id, done)] = cached
        return cached

    def result_chunks(self, rec: GeminiBatch, done: int) -> Iterator[bytes]:
        """The responses file of a file batch: JSONL in ~1 MiB chunks."""
        yield from gemini_outputs.chunked(self._results(rec, done, gemini_outputs.responses_file_lines))

    def output_batch(self, file_id: str) -> GeminiBatch:
        """The file batch whose responses file is ``files/<file_id>``."""
        rec = self.records.get(file_id.removeprefix("batch-")) if file_id.startswith("batch-") else None
        if (
            rec is None
            or rec.source != "file"
            or self.view(rec, self.store.clock.now()).state not in TERMINAL
        ):
            raise GeminiError(
                403,
                "PERMISSION_DENIED",
                f"You do not have permission to access the File {file_id} or it may not exist.",
            )
        return rec

    def kept(self, rec: GeminiBatch) -> int:
        view = self.view(rec, self.store.clock.now())
        if view.state == "BATCH_STATE_SUCCEEDED" or self.settings.partial_results:
            return view.done
        return 0

    # ------------------------------------------------------------------ mutate / list

    def cancel(self, rec: GeminiBatch) -> None:
        view = self.view(rec, self.store.clock.now())
        if view.state in TERMINAL:
            raise GeminiError(
                400,
                "FAILED_PRECONDITION",
                f"Batch {rec.name} is in state {view.state} and cannot be cancelled.",
            )
        if rec.cancel_at is None:
            rec.cancel_at = self.store.clock.now()
            self.save(rec)

    def delete(self, rec: GeminiBatch) -> None:
        self.forget(rec.id)

    def listed(self) -> list[GeminiBatch]:
        """Newest first."""
        return sorted(self.records.values(), key=lambda r: r.seq, reverse=True)


def attach(store: Store) -> GeminiBatches:
    """The Gemini batches of ``store`` (``store.gemini``), cleared by ``/_emu/reset``."""
    return registry.attach(store, GeminiBatches)
