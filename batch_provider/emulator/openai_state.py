"""OpenAI batch state machine (spec A.4-A.8, E).

A batch is a small persisted record plus a *plan* computed once from its input file: validation
errors, request count, which requests fail and why, and prefix sums of token usage. Status,
counts, usage and output files are pure functions of (record, plan, emulated now)::

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
- The plan is built once per batch, in a worker thread started by create (which does not wait);
  every read of a batch awaits it; a batch created by this process counts in the stats exactly
  once, when its plan is built.
- Processing order is file order: "done by time t" is always a prefix of the requests, so counts
  and usage at any t are O(log n) from the plan.
- Each custom_id ends in exactly one of output file, error file, or (expired/cancelled and
  unrun, when those lines are turned off) nowhere.
- ``request_counts.total`` is 0 while validating and for failed batches.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
import logging
import math
import os
import shutil
from array import array
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from . import outputs
from .errors import ApiError, not_found
from .faults import BatchFaults, FaultSyntaxError, item_error_code, parse_batch_faults, parse_custom_id
from .openai_outputs import (
    ITEM_ERRORS,
    SYNTHETIC_MODEL,
    OutputJob,
    synthetic_line_length,
    synthetic_tokens,
    write_file,
)
from .store import FileRecord, new_id, write_json

if TYPE_CHECKING:
    from .store import Store

log = logging.getLogger(__name__)

SUPPORTED_ENDPOINTS = ("/v1/responses", "/v1/chat/completions", "/v1/embeddings", "/v1/completions")
SDK_ENDPOINTS = (
    *SUPPORTED_ENDPOINTS,
    "/v1/moderations",
    "/v1/images/generations",
    "/v1/images/edits",
    "/v1/videos",
)
TERMINAL = ("completed", "failed", "expired", "cancelled")
MAX_ERRORS = 1000

@dataclass
class Plan:
    n: int = 0
    model: str | None = None
    errors: list[dict[str, Any]] = field(default_factory=list)
    fail: dict[int, tuple[int, str, str | None]] = field(default_factory=dict)
    """index → (status, message, param) of requests that run and get a non-2xx answer."""
    fail_sorted: list[int] = field(default_factory=list)
    in_prefix: array = field(default_factory=lambda: array("q", [0]))
    out_prefix: array = field(default_factory=lambda: array("q", [0]))
    faults: BatchFaults = field(default_factory=BatchFaults)
    injected: Counter[str] = field(default_factory=Counter)
    """Injected faults by kind (``item_<status>``, ``batch_<directive>``), for the stats."""

    def failed_before(self, k: int) -> int:
        return bisect.bisect_left(self.fail_sorted, k)


@dataclass
class OpenAIBatch:
    id: str
    endpoint: str
    input_file_id: str
    completion_window: str
    metadata: dict[str, str] | None
    created_at: float
    expires_at: float
    faults: dict[str, Any]
    output_ttl: float
    cancel_at: float | None = None
    input_missing: bool = False
    seq: int = 0
    downloads: int = 0
    synthetic_text_bytes: int | None = None
    """Set for ``/_emu/synthetic`` batches: completed at once, output generated on the fly."""
    synthetic_n: int = 0
    outputs_ready_at: float | None = None
    """With ``outputs_at_finalize``: when its output and error files were written (emulated time)."""


class OpenAIBatches:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.cfg = store.config
        self.dir = store.root / "openai"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.records: dict[str, OpenAIBatch] = {}
        self._seq = 0
        self.order: list[str] = []
        self.pos: dict[str, int] = {}
        self.plans: dict[str, Plan] = {}
        self._plan_tasks: dict[str, asyncio.Future[Plan]] = {}
        """Plans being built, by batch id; a task leaves this once its plan is in ``plans``."""
        self._uncounted: set[str] = set()
        """Batches created by this process whose plan is not yet counted in the stats."""
        self._writing: dict[str, asyncio.Future[None]] = {}
        """Batches whose output/error files are being written in the background (outputs_at_finalize)."""
        self.owners: dict[str, str] = {}
        """output/error file id → batch id, for per-batch download faults."""
        self._terminal_files: dict[str, tuple[str | None, str | None]] = {}
        """batch id → (output file id, error file id), once registered."""
        loaded = []
        for meta in self.dir.glob("batch_*.json"):
            with contextlib.suppress(ValueError, TypeError):
                loaded.append(OpenAIBatch(**json.loads(meta.read_text())))
        for rec in sorted(loaded, key=lambda r: r.seq):
            self._index(rec)

    def _index(self, rec: OpenAIBatch) -> None:
        self._seq = max(self._seq, rec.seq)
        self.records[rec.id] = rec
        self.pos[rec.id] = len(self.order)
        self.order.append(rec.id)

    def output_owner(self, file_id: str) -> OpenAIBatch | None:
        bid = self.owners.get(file_id)
        return self.records.get(bid) if bid and bid in self.plans else None

    def save(self, rec: OpenAIBatch) -> None:
        self._save(rec)

    def _save(self, rec: OpenAIBatch) -> None:
        write_json(self.dir / f"{rec.id}.json", asdict(rec))
        self.store.save_clock()

    def input_path(self, batch_id: str) -> Path:
        return self.dir / f"{batch_id}.input.jsonl"

    def clear(self) -> None:
        for bid in self.order:
            for p in (self.dir / f"{bid}.json", self.input_path(bid)):
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
        self.records.clear()
        self.order.clear()
        self.pos.clear()
        self.plans.clear()
        self._plan_tasks.clear()
        self._uncounted.clear()
        self._writing.clear()
        self.owners.clear()
        self._terminal_files.clear()

    async def settle(self, *, outputs: bool = False) -> None:
        """Build every plan not built yet and wait for it (and, with ``outputs``, for every file being
        written in the background), so that counters include them. Failures are left to their
        readers."""
        for batch_id in list(self._uncounted):
            rec = self.records.get(batch_id)
            if rec is not None and batch_id not in self.plans:
                self._start_plan(rec)
        pending = [*self._plan_tasks.values(), *(self._writing.values() if outputs else ())]
        if pending:
            await asyncio.wait(pending)

    # ------------------------------------------------------------------ create / plan

    async def create(self, body: Any) -> OpenAIBatch:
        if not isinstance(body, dict):
            raise ApiError(400, "The request body must be a JSON object.")
        for key in ("input_file_id", "endpoint", "completion_window"):
            if not isinstance(body.get(key), str) or not body[key]:
                raise ApiError(400, f"Missing required parameter: '{key}'.", param=key)
        endpoint = body["endpoint"]
        if endpoint not in SDK_ENDPOINTS:
            raise ApiError(
                400,
                f"Invalid value for 'endpoint': {endpoint!r}. Supported: {', '.join(SDK_ENDPOINTS)}.",
                param="endpoint",
            )
        if endpoint not in SUPPORTED_ENDPOINTS:
            raise ApiError(400, f"The emulator does not support endpoint {endpoint!r}.", param="endpoint")
        if body["completion_window"] != "24h":
            raise ApiError(
                400,
                "Invalid value for 'completion_window': only '24h' is supported.",
                param="completion_window",
            )
        metadata = self._check_metadata(body.get("metadata"))
        output_ttl = self.cfg.file_ttl_seconds
        oea = body.get("output_expires_after")
        if oea is not None:
            if (
                not isinstance(oea, dict)
                or oea.get("anchor") != "created_at"
                or not isinstance(oea.get("seconds"), int)
                or not 3600 <= oea["seconds"] <= 2592000
            ):
                raise ApiError(
                    400,
                    "Invalid 'output_expires_after': anchor must be 'created_at', seconds 3600..2592000.",
                    param="output_expires_after",
                )
            output_ttl = float(oea["seconds"])
        try:
            faults = parse_batch_faults((metadata or {}).get("emu_faults"), self.cfg.expire_done_fraction)
        except FaultSyntaxError as exc:
            raise ApiError(400, f"Invalid metadata 'emu_faults': {exc}", param="metadata") from exc
        faults = self.store.faults.batch_defaults.merged(faults)
        now = self.store.clock.now()
        rec = OpenAIBatch(
            id=new_id("batch_"),
            endpoint=endpoint,
            input_file_id=body["input_file_id"],
            completion_window="24h",
            metadata=metadata,
            created_at=now,
            expires_at=now + self.cfg.completion_window_seconds,
            faults=faults.to_json(),
            output_ttl=output_ttl,
            seq=self._seq + 1,
        )
        src = self.store.files.get(rec.input_file_id, now)
        if src is None:
            rec.input_missing = True
        else:
            src = await self.store.files.ready(src)
            await asyncio.to_thread(_link_or_copy, self.store.files.path(src.id), self.input_path(rec.id))
        self._index(rec)
        self._save(rec)
        self.store.stats.batches_created["openai"] += 1
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

    def _check_metadata(self, metadata: Any) -> dict[str, str] | None:
        if metadata is None:
            return None
        c = self.cfg
        if not isinstance(metadata, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
        ):
            raise ApiError(400, "Invalid 'metadata': expected an object of string values.", param="metadata")
        if len(metadata) > c.openai_metadata_max_pairs:
            raise ApiError(
                400, f"Invalid 'metadata': at most {c.openai_metadata_max_pairs} pairs.", param="metadata"
            )
        for k, v in metadata.items():
            if len(k) > c.openai_metadata_max_key or len(v) > c.openai_metadata_max_value:
                raise ApiError(
                    400,
                    f"Invalid 'metadata': keys up to {c.openai_metadata_max_key} characters, "
                    f"values up to {c.openai_metadata_max_value}.",
                    param="metadata",
                )
        return dict(metadata)

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
            seq=self._seq + 1,
            synthetic_text_bytes=text_bytes,
            synthetic_n=n,
        )
        self._index(rec)
        self._save(rec)
        self.store.stats.batches_created["openai"] += 1
        return rec

    async def plan(self, rec: OpenAIBatch) -> Plan:
        plan = self.plans.get(rec.id)
        if plan is not None:
            return plan
        if rec.synthetic_text_bytes is not None:
            n, tok = rec.synthetic_n, synthetic_tokens(rec.synthetic_text_bytes)
            plan = Plan(
                n=n,
                model=SYNTHETIC_MODEL,
                in_prefix=array("q", range(0, 10 * (n + 1), 10)),
                out_prefix=array("q", range(0, tok * (n + 1), tok)) if tok else array("q", [0] * (n + 1)),
            )
            self.plans[rec.id] = plan
            return plan
        return await asyncio.shield(self._start_plan(rec))

    def _start_plan(self, rec: OpenAIBatch) -> asyncio.Future[Plan]:
        """The task building ``rec``'s plan (started once; a failed build is retried by the next read)."""
        task = self._plan_tasks.get(rec.id)
        if task is None:
            task = asyncio.ensure_future(self._run_plan(rec))
            task.add_done_callback(_observe)
            self._plan_tasks[rec.id] = task
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
        cfg = self.cfg
        plan = Plan(faults=BatchFaults.from_json(rec.faults))
        path = self.input_path(rec.id)
        if rec.input_missing or not path.exists():
            plan.errors.append(
                _err(
                    "file_not_found",
                    f"Cannot find file {rec.input_file_id}, or organization {cfg.organization} "
                    "does not have access to it.",
                    param="input_file_id",
                )
            )
            return plan
        if path.stat().st_size > cfg.openai_max_file_bytes:
            plan.errors.append(
                _err("file_too_large", f"The input file is larger than {cfg.openai_max_file_bytes} bytes.")
            )
            return plan
        seen: set[str] = set()
        emb_inputs = 0
        with path.open("rb") as fh:
            for lineno, raw in enumerate(fh, 1):
                if not raw.strip():
                    continue
                idx = plan.n
                plan.n += 1
                if plan.n > cfg.openai_max_requests:
                    continue
                line_err = _check_line(raw, rec.endpoint, seen, cfg.custom_id_max_len)
                if isinstance(line_err, dict):
                    if len(plan.errors) < MAX_ERRORS:
                        plan.errors.append({**line_err, "line": lineno})
                    continue
                custom_id, body = line_err
                model = body.get("model")
                if plan.model is None:
                    plan.model = model
                elif model != plan.model and len(plan.errors) < MAX_ERRORS:
                    plan.errors.append(
                        _err(
                            "model_mismatch",
                            f"The model {model!r} differs from {plan.model!r}: a batch file may use only "
                            "one model.",
                            param="body.model",
                            line=lineno,
                        )
                    )
                explicit, tokens = parse_custom_id(custom_id, cfg.expire_done_fraction)
                if idx == 0:
                    plan.faults = plan.faults.merged(tokens)
                if rec.endpoint == "/v1/embeddings":
                    emb_inputs += len(outputs.embedding_inputs(body))
                if plan.errors:
                    continue
                code = item_error_code(cfg.seed, custom_id, plan.faults, explicit)
                refusal = _body_problem(rec.endpoint, body)
                in_tok = out_tok = 0
                if code is not None:
                    plan.fail[idx] = (code, ITEM_ERRORS[code][2], None)
                    plan.injected[f"item_{code}"] += 1
                elif refusal is not None:
                    plan.fail[idx] = (400, refusal[0], refusal[1])
                else:
                    in_tok, out_tok = outputs.openai_usage(rec.endpoint, body, cfg.seed)
                plan.in_prefix.append(plan.in_prefix[-1] + in_tok)
                plan.out_prefix.append(plan.out_prefix[-1] + out_tok)
        if plan.n == 0:
            plan.errors.append(_err("empty_file", "The input file is empty: it holds no requests."))
        elif plan.n > cfg.openai_max_requests:
            plan.errors.insert(
                0,
                _err(
                    "too_many_tasks",
                    f"The batch has {plan.n} requests; the limit is {cfg.openai_max_requests}.",
                ),
            )
        elif emb_inputs > cfg.openai_max_embedding_inputs:
            plan.errors.append(
                _err(
                    "too_many_embedding_inputs",
                    f"The batch has {emb_inputs} embedding inputs; the limit is "
                    f"{cfg.openai_max_embedding_inputs}.",
                )
            )
        if not plan.errors and plan.faults.fail_validation:
            code = plan.faults.fail_validation
            msg = (
                f"Enqueued token limit reached for {plan.model} in organization {cfg.organization}. "
                "Limit: 90000 enqueued tokens. Please try again once some in_progress batches have been "
                "completed."
                if code == "token_limit_exceeded"
                else f"Validation failed ({code}, emulated fault)."
            )
            plan.errors.append(_err(code, msg))
        plan.fail_sorted = sorted(plan.fail)
        return plan

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
        if status in ("finalizing", "completed") and c is None and self._writes_at_finalize(rec):
            self._output_files_once(rec, plan, "completed", done, failed, t_fin)
            if rec.outputs_ready_at is None:
                status, ts["completed_at"] = "finalizing", None
            elif status == "completed":
                ts["completed_at"] = max(t_fin, rec.outputs_ready_at)
        output_file_id = error_file_id = None
        if status in ("completed", "expired", "cancelled") and validated:
            ended = ts["completed_at"] or ts["expired_at"] or ts["cancelled_at"] or now
            output_file_id, error_file_id = self._output_files_once(rec, plan, status, done, failed, ended)
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

    def _writes_at_finalize(self, rec: OpenAIBatch) -> bool:
        return self.cfg.outputs_at_finalize and rec.synthetic_text_bytes is None

    def _output_files_once(
        self, rec: OpenAIBatch, plan: Plan, status: str, done: int, failed: int, ended: float
    ) -> tuple[str | None, str | None]:
        """The batch's (output, error) file ids, registered at its first terminal view (or, with
        ``outputs_at_finalize``, at the end of processing, when their writing starts)."""
        files = self._terminal_files.get(rec.id)
        if files is None:
            files = self._terminal_files[rec.id] = self._output_files(rec, plan, status, done, failed, ended)
        if self._writes_at_finalize(rec) and rec.outputs_ready_at is None and rec.id not in self._writing:
            task = asyncio.ensure_future(self._write_files(rec, files))
            task.add_done_callback(_observe)
            self._writing[rec.id] = task
        return files

    async def _write_files(self, rec: OpenAIBatch, files: tuple[str | None, str | None]) -> None:
        """Write the batch's pending files (each in a worker thread), then stamp ``outputs_ready_at``."""
        try:
            for fid in files:
                frec = self.store.files.records.get(fid) if fid else None
                if frec is not None:
                    await self.store.files.ready(frec)
        finally:
            self._writing.pop(rec.id, None)
        if self.records.get(rec.id) is rec:
            rec.outputs_ready_at = self.store.clock.now()
            self._save(rec)

    def _output_files(
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
        t_v, t_p = self.timeline(rec, plan)
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
        )
        write_file(job, self.input_path(rec.id), target)

    # ------------------------------------------------------------------ mutate / list

    async def cancel(self, rec: OpenAIBatch) -> dict[str, Any]:
        plan = await self.plan(rec)
        now = self.store.clock.now()
        current = self.view(rec, plan, now)
        if current["status"] in TERMINAL:
            raise ApiError(400, f"Cannot cancel a batch with status '{current['status']}'.")
        if rec.cancel_at is None:
            rec.cancel_at = now
            self._save(rec)
        return self.view(rec, plan, now)

    def page(self, after: str | None, limit: int) -> tuple[list[OpenAIBatch], bool]:
        """Newest first; ``after`` is the id of the last batch of the previous page."""
        if after is None:
            start = len(self.order) - 1
        elif after in self.pos:
            start = self.pos[after] - 1
        else:
            return [], False
        items = []
        i = start
        while i >= 0 and len(items) < limit:
            rec = self.records.get(self.order[i])
            if rec is not None:
                items.append(rec)
            i -= 1
        return items, i >= 0


_NO_PLAN = Plan()
"""Stands in for a plan where a view does not depend on it (a batch still validating)."""


def _observe(task: asyncio.Future[Any]) -> None:
    """Mark a background task's failure as seen: whoever awaits the task gets the exception."""
    if not task.cancelled() and task.exception() is not None:
        log.warning("background task failed: %r", task.exception())


def _err(code: str, message: str, *, param: str | None = None, line: int | None = None) -> dict[str, Any]:
    return {"code": code, "message": message, "param": param, "line": line}


def _check_line(
    raw: bytes, endpoint: str, seen: set[str], max_len: int
) -> dict[str, Any] | tuple[str, dict[str, Any]]:
    """A validation error dict for a bad line, else (custom_id, body)."""
    try:
        obj = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        obj = None
    if not isinstance(obj, dict):
        return _err("invalid_json_line", "This line is not parseable as valid JSON.")
    cid = obj.get("custom_id")
    if not isinstance(cid, str) or not 1 <= len(cid) <= max_len:
        return _err(
            "invalid_custom_id",
            f"'custom_id' must be a string of 1..{max_len} characters.",
            param="custom_id",
        )
    if cid in seen:
        return _err(
            "duplicate_custom_id",
            f"The custom_id '{cid}' appears more than once; custom_id must be unique within a file.",
            param="custom_id",
        )
    seen.add(cid)
    if obj.get("method") != "POST":
        return _err("invalid_method", "Only the 'POST' method is supported.", param="method")
    if obj.get("url") != endpoint:
        return _err(
            "url_mismatch",
            f"The url {obj.get('url')!r} does not match the batch endpoint {endpoint!r}.",
            param="url",
        )
    body = obj.get("body")
    if not isinstance(body, dict):
        return _err("invalid_body", "'body' must be a JSON object.", param="body")
    if body.get("stream") is True:
        return _err(
            "stream_not_supported",
            "Streaming ('stream': true) is not supported in batches.",
            param="body.stream",
        )
    if not isinstance(body.get("model"), str) or not body["model"]:
        return _err("missing_model", "Missing required parameter: 'body.model'.", param="body.model")
    return cid, body


def _body_problem(endpoint: str, body: dict[str, Any]) -> tuple[str, str] | None:
    """(message, param) when the endpoint itself would refuse the body with a 400."""
    if endpoint == "/v1/chat/completions":
        msgs = body.get("messages")
        if not isinstance(msgs, list) or not msgs:
            return "Missing required parameter: 'messages'.", "messages"
    elif endpoint == "/v1/responses":
        if body.get("input") in (None, "", []):
            return "Missing required parameter: 'input'.", "input"
    elif endpoint == "/v1/embeddings":
        if not outputs.embedding_inputs(body):
            return "'input' must be a non-empty string or array.", "input"
        dims = body.get("dimensions")
        if dims is not None and (
            not isinstance(dims, int) or isinstance(dims, bool) or not 1 <= dims <= 4096
        ):
            return "Invalid value for 'dimensions': expected an integer within 1..4096.", "dimensions"
    elif endpoint == "/v1/completions" and body.get("prompt") in (None, "", []):
        return "Missing required parameter: 'prompt'.", "prompt"
    for key in ("max_completion_tokens", "max_tokens", "max_output_tokens"):
        v = body.get(key)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
            return f"Invalid value for '{key}': expected an integer >= 1.", key
    return None


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)
