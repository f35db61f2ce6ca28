"""Anthropic Message Batches state machine. A batch's results stream comes from
:mod:`.outputs`.

Timeline, all derived from the record and the emulated clock::

    created_at ── in_progress ── t_end = created_at + processing_seconds + n * per_request_seconds ── ended
    expires_at = created_at + 24h: if t_end >= expires_at the batch ends there, unfinished → expired
    cancel at c: canceling until c + cancel_seconds (or t_end if sooner), then ended; the requests
                 finished by c keep their results, the others → canceled
    archived_at = created_at + 29 d: results gone (404)

Invariants:
- While not ended, ``request_counts`` is all ``processing`` (B.3); once ended, ``processing`` is
  0 and the five counts add up to the number of requests.
- Per-request problems (bad ``params``, ``stream``, ``speed``, ``max_tokens: 0``, injected faults)
  become ``errored`` results; only top-level problems are synchronous 400s.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .. import models, registry
from ..clock import rfc3339
from ..errors import ApiError, not_found
from ..faults import BatchFaults, directive_id, parse_custom_id
from ..registry import BatchRegistry
from ..store import new_id
from . import outputs as anthropic_outputs
from .outputs import ERROR_TYPES
from .plan import Plan

if TYPE_CHECKING:
    from ..store import Store

CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


@dataclass
class AnthropicBatch:
    id: str
    created_at: float
    expires_at: float
    n: int
    faults: dict[str, Any]
    cancel_at: float | None = None
    seq: int = 0
    downloads: int = 0
    synthetic_text_bytes: int | None = None
    """Set for ``/_emu/synthetic`` batches: n generated requests, results of this text size."""
    processing_seconds: float | None = None


class AnthropicBatches(BatchRegistry[AnthropicBatch]):
    """Every Anthropic message batch of one emulator, persisted under ``<data dir>/anthropic``."""

    PROVIDER = "anthropic"
    RECORD_TYPE = AnthropicBatch
    META_GLOB = "msgbatch_*.json"
    INPUT_SUFFIX = ".requests.jsonl"

    def __init__(self, store: Store) -> None:
        super().__init__(store)
        self.plans: dict[str, Plan] = {}

    def clear(self) -> None:
        super().clear()
        self.plans.clear()

    # ------------------------------------------------------------------ create

    def validate(self, body: Any) -> list[dict[str, Any]]:
        """Top-level checks (synchronous 400s); returns the request list."""
        if not isinstance(body, dict) or not isinstance(body.get("requests"), list):
            raise ApiError(400, "requests: Field required")
        reqs = body["requests"]
        if not reqs:
            raise ApiError(400, "requests: List should have at least 1 item after validation, not 0")
        if len(reqs) > self.cfg.anthropic_max_requests:
            raise ApiError(
                400,
                f"requests: List should have at most {self.cfg.anthropic_max_requests} items, "
                f"not {len(reqs)}",
            )
        seen: set[str] = set()
        for i, r in enumerate(reqs):
            if not isinstance(r, dict):
                raise ApiError(400, f"requests.{i}: Input should be a valid dictionary")
            cid = r.get("custom_id")
            if not isinstance(cid, str) or not CUSTOM_ID.match(cid):
                raise ApiError(
                    400, f"requests.{i}.custom_id: String should match pattern '^[a-zA-Z0-9_-]{{1,64}}$'"
                )
            if cid in seen:
                raise ApiError(400, f"requests.{i}.custom_id: Duplicate custom_id {cid!r} in this batch.")
            seen.add(cid)
            if not isinstance(r.get("params"), dict):
                raise ApiError(400, f"requests.{i}.params: Field required")
        return reqs

    async def create(self, body: Any) -> AnthropicBatch:
        reqs = self.validate(body)
        now = self.store.clock.now()
        rec = AnthropicBatch(
            id=new_id("msgbatch_01", 22),
            created_at=now,
            expires_at=now + self.cfg.completion_window_seconds,
            n=len(reqs),
            faults=self.store.faults.batch_defaults.to_json(),
            seq=self.next_seq(),
        )
        await asyncio.to_thread(self._write_requests, rec.id, reqs)
        self.add(rec)
        self.store.stats.count_plan(await self.plan(rec))
        return rec

    def create_synthetic(self, n: int, text_bytes: int, processing_seconds: float = 0.0) -> AnthropicBatch:
        now = self.store.clock.now()
        rec = AnthropicBatch(
            id=new_id("msgbatch_01", 22),
            created_at=now,
            expires_at=now + self.cfg.completion_window_seconds,
            n=n,
            faults=BatchFaults().to_json(),
            seq=self.next_seq(),
            synthetic_text_bytes=text_bytes,
            processing_seconds=processing_seconds,
        )
        self.add(rec)
        self.plans[rec.id] = Plan(n=n)
        return rec

    def _write_requests(self, batch_id: str, reqs: list[dict[str, Any]]) -> None:
        with self.input_path(batch_id).open("wb") as fh:
            for r in reqs:
                line = {"custom_id": r["custom_id"], "params": r["params"]}
                fh.write(json.dumps(line, separators=(",", ":"), ensure_ascii=False).encode() + b"\n")

    async def plan(self, rec: AnthropicBatch) -> Plan:
        plan = self.plans.get(rec.id)
        if plan is None:
            if rec.synthetic_text_bytes is not None:
                plan = Plan(n=rec.n)
            else:
                plan = await asyncio.to_thread(self._build_plan, rec)
            self.plans[rec.id] = plan
        return plan

    def _build_plan(self, rec: AnthropicBatch) -> Plan:
        cfg = self.cfg
        plan = Plan(faults=BatchFaults.from_json(rec.faults))
        item_code = self.store.item_codes("anthropic", rec.seq)
        with self.input_path(rec.id).open("rb") as fh:
            for raw in fh:
                idx = plan.n
                plan.n += 1
                plan.offsets.append(plan.offsets[-1] + len(raw))
                obj = json.loads(raw)
                cid = obj["custom_id"]
                explicit, tokens = parse_custom_id(directive_id(cid, raw), cfg.expire_done_fraction)
                if idx == 0:
                    plan.faults = plan.faults.merged(tokens)
                problem = anthropic_outputs.params_problem(obj["params"])
                code = item_code(cid, plan.faults, explicit, obj["params"])
                model = obj["params"].get("model")
                if problem is None and not models.serves(cfg, "anthropic", model):
                    plan.fail[idx] = ("not_found_error", f"model: {model}")
                elif problem is not None:
                    plan.fail[idx] = ("invalid_request_error", problem)
                elif code is not None:
                    plan.injected[f"item_{code}"] += 1
                    plan.fail[idx] = (
                        ERROR_TYPES[code],
                        f"{ERROR_TYPES[code]} (emulated fault, status {code}).",
                    )
        plan.fail_sorted = sorted(plan.fail)
        return plan

    # ------------------------------------------------------------------ read

    def get(self, batch_id: str) -> AnthropicBatch:
        rec = self.records.get(batch_id)
        if rec is None:
            raise not_found(f"{batch_id} not found", "anthropic")
        return rec

    def _t_end(self, rec: AnthropicBatch, plan: Plan) -> float:
        if plan.faults.expire is not None:
            return math.inf
        if rec.processing_seconds is not None:
            return rec.created_at + rec.processing_seconds
        return rec.created_at + self.cfg.processing_seconds + plan.n * self.cfg.per_request_seconds

    def done_at(self, rec: AnthropicBatch, plan: Plan, t: float) -> int:
        if t <= rec.created_at or plan.n == 0:
            return 0
        if plan.faults.expire is not None:
            span = max(rec.expires_at - rec.created_at, 1e-9)
            return min(
                plan.n, math.floor(plan.faults.expire * plan.n * min(1.0, (t - rec.created_at) / span))
            )
        t_end = self._t_end(rec, plan)
        return min(plan.n, math.floor(plan.n * (t - rec.created_at) / max(t_end - rec.created_at, 1e-9)))

    def state(self, rec: AnthropicBatch, plan: Plan, now: float) -> tuple[str, float | None, int, str | None]:
        """(processing_status, ended_at, requests done, how unrun requests end: expired/canceled)."""
        t_end = self._t_end(rec, plan)
        c = rec.cancel_at
        if c is not None:
            end = min(c + self.cfg.cancel_seconds, t_end)
            if now < end:
                return "canceling", None, 0, None
            return "ended", end, self.done_at(rec, plan, min(c, t_end)), "canceled"
        if t_end >= rec.expires_at and now >= rec.expires_at:
            return "ended", rec.expires_at, self.done_at(rec, plan, rec.expires_at), "expired"
        if now < t_end:
            return "in_progress", None, 0, None
        return "ended", t_end, plan.n, None

    def view(self, rec: AnthropicBatch, plan: Plan, now: float, base_url: str) -> dict[str, Any]:
        status, ended_at, done, unrun_as = self.state(rec, plan, now)
        counts = {"processing": plan.n, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
        results_url = None
        if status == "ended":
            errored = plan.failed_before(done)
            counts = {
                "processing": 0,
                "succeeded": done - errored,
                "errored": errored,
                "canceled": 0,
                "expired": 0,
            }
            if unrun_as:
                counts[unrun_as] = plan.n - done
            results_url = f"{base_url}/v1/messages/batches/{rec.id}/results"
        archive = rec.created_at + self.cfg.anthropic_archive_seconds
        return {
            "id": rec.id,
            "type": "message_batch",
            "processing_status": status,
            "request_counts": counts,
            "ended_at": rfc3339(ended_at),
            "created_at": rfc3339(rec.created_at),
            "expires_at": rfc3339(rec.expires_at),
            "archived_at": rfc3339(archive) if now >= archive else None,
            "cancel_initiated_at": rfc3339(rec.cancel_at),
            "results_url": results_url,
        }

    def archived(self, rec: AnthropicBatch, now: float) -> bool:
        return now >= rec.created_at + self.cfg.anthropic_archive_seconds

    # ------------------------------------------------------------------ mutate / list

    async def cancel(self, rec: AnthropicBatch, base_url: str) -> dict[str, Any]:
        plan = await self.plan(rec)
        now = self.store.clock.now()
        status, *_ = self.state(rec, plan, now)
        if status == "ended":
            raise ApiError(400, f"Batch {rec.id} has already ended and cannot be canceled.")
        if rec.cancel_at is None:
            rec.cancel_at = now
            self.save(rec)
        return self.view(rec, plan, now, base_url)

    async def delete(self, rec: AnthropicBatch) -> None:
        plan = await self.plan(rec)
        status, *_ = self.state(rec, plan, self.store.clock.now())
        if status != "ended":
            raise ApiError(
                400,
                f"Batch {rec.id} cannot be deleted while it is {status}; "
                "cancel it and wait until it has ended.",
            )
        self.plans.pop(rec.id, None)
        self.forget(rec.id)

    def page(
        self, before_id: str | None, after_id: str | None, limit: int
    ) -> tuple[list[AnthropicBatch], bool]:
        """Newest first. ``after_id``: older than that id; ``before_id``: newer than that id."""
        if before_id is not None:
            return self.newer_than(before_id, limit)
        return self.older_than(after_id, limit)

    # ------------------------------------------------------------------ results

    def result_lines(self, rec: AnthropicBatch, plan: Plan, now: float) -> Iterator[bytes]:
        """JSONL result chunks (about 1 MiB each), in file order or shuffled."""
        _, _, done, unrun_as = self.state(rec, plan, now)
        if rec.synthetic_text_bytes is not None:
            yield from anthropic_outputs.synthetic_chunks(rec.n, rec.synthetic_text_bytes)
            return
        cfg = self.cfg
        shuffle = plan.faults.shuffle or cfg.shuffle_results or cfg.anthropic_results_shuffled
        shuffle_key = f"{rec.id}:shuffle" if shuffle else None
        yield from anthropic_outputs.result_chunks(
            self.input_path(rec.id), plan, done, unrun_as, cfg.seed, shuffle_key
        )


def attach(store: Store) -> AnthropicBatches:
    """The Anthropic batches of ``store`` (``store.anthropic``), cleared by ``/_emu/reset``."""
    return registry.attach(store, AnthropicBatches)
