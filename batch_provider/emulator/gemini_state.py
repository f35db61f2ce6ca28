"""Gemini batch mode state machine (spec D, E), persisted under ``<data dir>/gemini``.

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
import dataclasses
import json
import math
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import gemini_outputs, registry
from .anthropic_state import rfc3339
from .faults import BatchFaults, FaultSyntaxError, item_error_code, parse_batch_faults, parse_custom_id
from .gemini_files import GeminiError, GeminiFiles, invalid, new_name, not_found
from .registry import BatchRegistry

if TYPE_CHECKING:
    from .store import Store

BATCH_TYPE = "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatch"
OUTPUT_TYPE = "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatchOutput"
TERMINAL = frozenset(
    {"BATCH_STATE_SUCCEEDED", "BATCH_STATE_FAILED", "BATCH_STATE_CANCELLED", "BATCH_STATE_EXPIRED"}
)
ITEM_STATUS = {
    400: ("INVALID_ARGUMENT", 3),
    422: ("INVALID_ARGUMENT", 3),
    429: ("RESOURCE_EXHAUSTED", 8),
    500: ("INTERNAL", 13),
    503: ("UNAVAILABLE", 14),
    504: ("DEADLINE_EXCEEDED", 4),
    529: ("UNAVAILABLE", 14),
}
"""Injected HTTP-style item status → (canonical status, gRPC code of the ``google.rpc.Status``)."""
CHUNK = 1 << 20


@dataclass
class GeminiSettings:
    """Gemini knobs; change them at run time with ``POST /_emu/gemini``."""

    expire_seconds: float = 48 * 3600.0
    inline_max_bytes: int = 20 * 1024 * 1024
    max_file_bytes: int = 2 * 1024**3
    display_name_max: int = 128
    file_ttl_seconds: float = 48 * 3600.0
    partial_results: bool = True
    """EXPIRED and CANCELLED batches keep the results of the requests finished in time."""
    list_inlined_responses: bool = False
    """List pages carry each batch's inlined responses (off: only ``get`` does, keeping pages small)."""

    def update(self, values: dict[str, Any]) -> None:
        known = {f.name: f for f in dataclasses.fields(self)}
        for name, value in values.items():
            if name not in known:
                raise ValueError(f"unknown gemini setting {name!r}; known: {', '.join(sorted(known))}")
            current = getattr(self, name)
            if isinstance(current, bool) and isinstance(value, str):
                value = value.lower() in ("1", "true", "yes", "on")
            setattr(self, name, type(current)(value))

    def restore_defaults(self) -> None:
        for f in dataclasses.fields(self):
            setattr(self, f.name, f.default)


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
class Plan:
    n: int = 0
    fail: dict[int, tuple[int, str]] = field(default_factory=dict)
    """index → (HTTP code, message) of requests that end with an error."""
    faults: BatchFaults = field(default_factory=BatchFaults)
    injected: Counter[str] = field(default_factory=Counter)

    def errors_before(self, k: int) -> int:
        return sum(1 for i in self.fail if i < k)


@dataclass
class View:
    state: str
    done: int
    ended_at: float | None


def _key_of(entry: dict[str, Any]) -> str:
    key = entry.get("key")
    if key is None:
        key = (entry.get("metadata") or {}).get("key") if isinstance(entry.get("metadata"), dict) else None
    return str(key) if key is not None else ""


class GeminiBatches(BatchRegistry[GeminiBatch]):
    """Every Gemini batch and file of one emulator, persisted under ``<data dir>/gemini``."""

    PROVIDER = "gemini"
    RECORD_TYPE = GeminiBatch
    META_GLOB = "*.batch.json"
    META_SUFFIX = ".batch.json"
    INPUT_SUFFIX = ".requests.jsonl"

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
        if not isinstance(body, dict) or not isinstance(body.get("batch"), dict):
            raise invalid("* BatchGenerateContentRequest.batch: batch is required")
        batch = body["batch"]
        name = str(batch.get("displayName") or "")
        if len(name) > self.settings.display_name_max:
            raise invalid(
                f"* batch.display_name: must be at most {self.settings.display_name_max} characters"
            )
        faults = self._display_name_faults(name)
        source = batch.get("inputConfig")
        if not isinstance(source, dict):
            raise invalid("* batch.input_config: input_config is required")
        file_name = source.get("fileName")
        inline = (
            (source.get("requests") or {}).get("requests")
            if isinstance(source.get("requests"), dict)
            else None
        )
        if (file_name is None) == (inline is None):
            raise invalid("* batch.input_config: exactly one of file_name or requests must be set")
        self._seq += 1
        rec = GeminiBatch(
            id=new_name(24),
            model=model if model.startswith("models/") else f"models/{model}",
            display_name=name,
            created_at=self.store.clock.now(),
            source="file" if file_name is not None else "inline",
            input_file=str(file_name) if file_name is not None else None,
            n=0,
            faults=self.store.faults.batch_defaults.merged(faults).to_json(),
            seq=self._seq,
        )
        if inline is not None:
            if not isinstance(inline, list) or not inline:
                raise invalid("* batch.input_config.requests.requests: at least one request is required")
            try:
                await asyncio.to_thread(self._write_inline, rec, inline)
            except GeminiError:
                self.input_path(rec.id).unlink(missing_ok=True)
                raise
        else:
            try:
                source_file = self.files.get(str(file_name), self.store.clock.now())
            except GeminiError:
                raise invalid(f"* batch.input_config.file_name: file {file_name} does not exist") from None
            await asyncio.to_thread(self._copy_file, rec, self.files.path(source_file.id))
        if rec.fail_message is None and BatchFaults.from_json(rec.faults).fail_validation:
            rec.fail_message = (
                f"Validation failed (emulated fault: {BatchFaults.from_json(rec.faults).fail_validation})."
            )
        self.add(rec)
        self.store.stats.count_plan(await asyncio.to_thread(self.plan, rec))
        return rec

    def _display_name_faults(self, name: str) -> BatchFaults:
        directive = next((t.partition("=")[2] for t in name.split() if t.startswith("emu_faults=")), "")
        try:
            return parse_batch_faults(directive, self.cfg.expire_done_fraction)
        except FaultSyntaxError as exc:
            raise invalid(f"bad emu_faults directive in displayName: {exc}") from None

    def _write_inline(self, rec: GeminiBatch, inline: list[Any]) -> None:
        with self.input_path(rec.id).open("wb") as fh:
            for i, entry in enumerate(inline):
                if not isinstance(entry, dict) or "request" not in entry:
                    raise invalid(f"* batch.input_config.requests.requests[{i}].request: request is required")
                line = {"metadata": entry.get("metadata"), "request": entry["request"]}
                fh.write(json.dumps(line, separators=(",", ":"), ensure_ascii=False).encode() + b"\n")
                rec.n += 1

    def _copy_file(self, rec: GeminiBatch, path: Path) -> None:
        """Copy an uploaded input file's lines; a bad line fails the batch in validation."""
        with path.open("rb") as src, self.input_path(rec.id).open("wb") as out:
            for number, raw in enumerate(src, start=1):
                if not raw.strip():
                    continue
                try:
                    entry = json.loads(raw)
                except ValueError:
                    rec.fail_message = f"Line {number} of {rec.input_file} is not valid JSON."
                    return
                if not isinstance(entry, dict) or not isinstance(entry.get("request"), dict):
                    rec.fail_message = f"Line {number} of {rec.input_file} has no 'request' object."
                    return
                line = {"key": entry.get("key"), "request": entry["request"]}
                out.write(json.dumps(line, separators=(",", ":"), ensure_ascii=False).encode() + b"\n")
                rec.n += 1
        if rec.n == 0:
            rec.fail_message = f"The input file {rec.input_file} holds no requests."

    def _entries(self, rec: GeminiBatch) -> Iterator[dict[str, Any]]:
        path = self.input_path(rec.id)
        if not path.exists():
            return
        with path.open("rb") as fh:
            for raw in fh:
                if raw.strip():
                    yield json.loads(raw)

    def plan(self, rec: GeminiBatch) -> Plan:
        plan = self.plans.get(rec.id)
        if plan is not None:
            return plan
        plan = Plan(faults=BatchFaults.from_json(rec.faults))
        for idx, entry in enumerate(self._entries(rec)):
            plan.n += 1
            key = _key_of(entry)
            explicit, tokens = parse_custom_id(key, self.cfg.expire_done_fraction)
            if idx == 0:
                plan.faults = plan.faults.merged(tokens)
            problem = gemini_outputs.request_problem(entry.get("request"))
            code = item_error_code(self.cfg.seed, key or str(idx), plan.faults, explicit)
            if problem is not None:
                plan.fail[idx] = (400, problem)
            elif code is not None:
                plan.injected[f"item_{code}"] += 1
                plan.fail[idx] = (code, f"{ITEM_STATUS[code][0]} (emulated fault, status {code}).")
        self.plans[rec.id] = plan
        return plan

    # ------------------------------------------------------------------ time

    def get(self, name: str) -> GeminiBatch:
        rec = self.records.get(name.removeprefix("batches/"))
        if rec is None:
            raise not_found(f"Batch {name} not found.")
        return rec

    def _t_run(self, rec: GeminiBatch) -> float:
        return rec.created_at + self.cfg.validating_seconds

    def _t_end(self, rec: GeminiBatch, plan: Plan) -> float:
        if plan.faults.expire is not None:
            return math.inf
        return self._t_run(rec) + self.cfg.processing_seconds + plan.n * self.cfg.per_request_seconds

    def expires_at(self, rec: GeminiBatch) -> float:
        return rec.created_at + self.settings.expire_seconds

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

    def _response(self, rec: GeminiBatch, plan: Plan, idx: int, entry: dict[str, Any]) -> dict[str, Any]:
        failure = plan.fail.get(idx)
        if failure is not None:
            code, message = failure
            return {"error": {"code": ITEM_STATUS[code][1], "message": message}}
        return {"response": gemini_outputs.generate(entry["request"], rec.model, self.cfg.seed)}

    def inlined(self, rec: GeminiBatch, done: int) -> list[dict[str, Any]]:
        cached = self._inline_cache.get((rec.id, done))
        if cached is not None:
            return cached
        plan = self.plan(rec)
        out: list[dict[str, Any]] = []
        for idx, entry in enumerate(self._entries(rec)):
            if idx >= done:
                break
            item = self._response(rec, plan, idx, entry)
            if entry.get("metadata") is not None:
                item["metadata"] = entry["metadata"]
            out.append(item)
        if plan.faults.shuffle or self.cfg.shuffle_results:
            random.Random(f"{self.cfg.seed}:{rec.id}").shuffle(out)
        self._inline_cache[(rec.id, done)] = out
        return out

    def result_chunks(self, rec: GeminiBatch, done: int) -> Iterator[bytes]:
        """The responses file of a file batch: JSONL in ~1 MiB chunks."""
        plan = self.plan(rec)
        lines: list[bytes] = []
        for idx, entry in enumerate(self._entries(rec)):
            if idx >= done:
                break
            item: dict[str, Any] = {}
            if entry.get("key") is not None:
                item["key"] = entry["key"]
            item.update(self._response(rec, plan, idx, entry))
            lines.append(json.dumps(item, separators=(",", ":"), ensure_ascii=False).encode() + b"\n")
        if plan.faults.shuffle or self.cfg.shuffle_results:
            random.Random(f"{self.cfg.seed}:{rec.id}").shuffle(lines)
        buf: list[bytes] = []
        size = 0
        for line in lines:
            buf.append(line)
            size += len(line)
            if size >= CHUNK:
                yield b"".join(buf)
                buf, size = [], 0
        if buf:
            yield b"".join(buf)

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
