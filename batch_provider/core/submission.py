"""Submit a run's requests as provider batches, idempotently.

Order of durable writes, per chunk: part file → ledger chunk → ledger ``intent_at`` → create call →
ledger ``batch``. A rerun after a crash at any point therefore either finds the batch in the ledger,
or finds the intent and looks the batch up at the provider before creating one:

- providers that keep tags (OpenAI metadata): the chunk's tags identify its batch exactly;
- providers that do not (Anthropic): batches created after the intent with the chunk's request
  count, not claimed by another chunk; among several, the one whose custom_ids match once ended,
  else the earliest.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from batch_provider.backends.base import BatchBackend, Chunk
from batch_provider.core.cache import ResultCache, relabelled
from batch_provider.core.catalog import request_problem
from batch_provider.core.handle import InputCounts, RunHandle
from batch_provider.core.ledger import (
    Ledger,
    LedgerAttempt,
    LedgerChunk,
    LedgerConflictError,
    RunKey,
    chunk_tags,
    utcnow,
)
from batch_provider.core.models import BatchRef, LLMRequest, RejectedRow, RequestKind
from batch_provider.core.pricing import Calibration, CostEstimator, PriceTable, default_price_table
from batch_provider.core.reconcile import expected_ids
from batch_provider.core.rundir import RunDirectory, remove_tree
from batch_provider.core.split import RequestSplitter

log = logging.getLogger(__name__)

OnCreated = Callable[[BatchRef], None]

# Clocks of this host and the provider may disagree; look a little before the recorded intent.
_CLOCK_SKEW = timedelta(minutes=5)

__all__ = ["BudgetExceededError", "RunKey", "submit_pending", "submit_run"]


CACHE_BLOCK = 512
"""Requests looked up in the result cache at once (one concurrent fetch on object storage)."""


def _relative(run_dir: RunDirectory, path: Any) -> str:
    return str(path)[len(str(run_dir.root)) :].lstrip("/")


class BudgetExceededError(RuntimeError):
    """The run's estimated cost is over ``max_cost_usd``; no batch was created."""


def _item_json(item: LLMRequest | RejectedRow) -> bytes:
    return item.model_dump_json(exclude_defaults=True).encode()


def input_fingerprint(items: Iterable[LLMRequest | RejectedRow]) -> str:
    """sha256 over the input items in order: equal for the same rows rendered the same way."""
    digest = hashlib.sha256()
    for item in items:
        digest.update(_item_json(item) + b"\n")
    return digest.hexdigest()


@dataclass
class _Intake:
    """One pass over the input: fingerprint, rejects, cache hits and the cost estimate, forwarding
    the requests that must be sent to the splitter."""

    backend: BatchBackend
    run_dir: RunDirectory
    cache: ResultCache | None
    prices: PriceTable
    allow_unknown_models: bool = False
    inputs: int = 0
    rejected: int = 0
    cached: int = 0
    cache_savings_usd: float = 0.0
    digest: Any = field(default_factory=hashlib.sha256)

    def __post_init__(self) -> None:
        self.estimator = CostEstimator(self.backend.provider.value)

    def reject(self, rejects: Any, row: RejectedRow) -> None:
        self.rejected += 1
        rejects.write(row.to_record().json_line())

    def requests(
        self, items: Iterable[LLMRequest | RejectedRow], rejects: Any, cached: Any, keys: Any
    ) -> Iterator[LLMRequest]:
        """The requests to send, in input order; with a cache, looked up ``CACHE_BLOCK`` at a time."""
        block: list[LLMRequest] = []
        for item in items:
            self.inputs += 1
            self.digest.update(_item_json(item) + b"\n")
            if isinstance(item, LLMRequest):
                problem = request_problem(
                    self.backend.provider, item, allow_unknown_models=self.allow_unknown_models
                )
                item = problem or item
            if isinstance(item, RejectedRow):
                self.reject(rejects, item)
                continue
            if self.cache is None:
                self._estimate(item)
                yield item
                continue
            block.append(item)
            if len(block) >= CACHE_BLOCK:
                yield from self._misses(block, cached, keys)
                block = []
        if block:
            yield from self._misses(block, cached, keys)

    def _misses(self, block: list[LLMRequest], cached: Any, keys: Any) -> Iterator[LLMRequest]:
        """Write the cache hits of ``block`` to ``cached``; yield the rest, in order."""
        assert self.cache is not None
        provider = self.backend.provider.value
        block_keys = [ResultCache.key(provider, request) for request in block]
        hits = self.cache.get_many(block_keys)
        for request, key in zip(block, block_keys, strict=True):
            hit = hits.get(key)
            if hit is not None:
                self.cached += 1
                self.cache_savings_usd += self.prices.cost(provider, hit.model, hit.usage).batch_usd
                cached.write(relabelled(hit, request.custom_id).json_line())
                continue
            keys.write(json.dumps({"custom_id": request.custom_id, "key": key}).encode() + b"\n")
            self._estimate(request)
            yield request

    def _estimate(self, request: LLMRequest) -> None:
        self.estimator.add(
            request.model,
            request.prompt_text(),
            request.max_tokens or _native_max_tokens(request),
            embedding=request.kind is RequestKind.EMBEDDING,
        )


def _native_max_tokens(request: LLMRequest) -> int | None:
    body = request.native or {}
    for name in ("max_tokens", "max_completion_tokens", "max_output_tokens"):
        if isinstance(body.get(name), int):
            return body[name]
    return None


def _intake(
    backend: BatchBackend,
    items: Iterable[LLMRequest | RejectedRow],
    run_dir: RunDirectory,
    *,
    cache: ResultCache | None,
    prices: PriceTable,
    max_requests_per_batch: int | None,
    max_bytes_per_batch: int | None,
    allow_unknown_models: bool,
) -> LedgerAttempt:
    """Write attempt 1's part files, rejects and cache hits; estimate what the parts will cost."""
    limits = backend.limits.lowered(
        max_requests_per_batch=max_requests_per_batch, max_bytes_per_batch=max_bytes_per_batch
    )
    parts_dir = run_dir.requests_dir(1)
    remove_tree(parts_dir)
    parts_dir.mkdir(parents=True, exist_ok=True)
    intake = _Intake(backend, run_dir, cache, prices, allow_unknown_models)
    with (
        run_dir.rejects.open("wb") as rejects,
        run_dir.cached.open("wb") as cached,
        run_dir.cache_keys.open("wb") as keys,
    ):
        splitter = RequestSplitter(
            backend, parts_dir, limits=limits, on_reject=lambda row: intake.reject(rejects, row)
        )
        chunks = [
            LedgerChunk(
                index=chunk.index,
                part=_relative(run_dir, chunk.path),
                request_count=chunk.request_count,
                byte_size=chunk.byte_size,
                group=chunk.group,
                model=chunk.model,
                endpoint=chunk.endpoint,
            )
            for chunk in splitter.split(intake.requests(items, rejects, cached, keys))
        ]
    estimate = intake.estimator.finish(prices, Calibration.load(run_dir.calibration))
    return LedgerAttempt(
        attempt=1,
        fingerprint=splitter.fingerprint,
        input_fingerprint=intake.digest.hexdigest(),
        chunks=chunks,
        inputs=intake.inputs,
        rejected=intake.rejected,
        cached=intake.cached,
        cache_savings_usd=intake.cache_savings_usd,
        estimate=estimate.summary(),
    )


def _check_budget(run_dir: RunDirectory, attempt: LedgerAttempt, max_cost_usd: float | None) -> None:
    """Refuse to create any batch when the estimate's ceiling is over ``max_cost_usd``."""
    if max_cost_usd is None or attempt.estimate is None:
        return
    if any(chunk.intent_at is not None for chunk in attempt.chunks):
        log.warning("Budget not re-checked: batches of %s were already being created", run_dir)
        return
    ceiling = attempt.estimate["ceiling"]["batch_usd"]
    expected = attempt.estimate["expected"]["batch_usd"]
    if ceiling > max_cost_usd:
        raise BudgetExceededError(
            f"estimated cost ${expected:.4f} expected, ${ceiling:.4f} if every request used its "
            f"max_tokens, is over max_cost_usd=${max_cost_usd:.4f}; nothing was sent. Lower "
            "max_tokens, split the input, or raise max_cost_usd."
        )


def _log_estimate(attempt: LedgerAttempt) -> None:
    if not attempt.estimate:
        return
    log.info("Cost estimate (batch prices):")
    log.info("  %-28s %9s %12s %12s %10s", "model", "requests", "input tok", "output tok", "basis")
    for model, entry in attempt.estimate["models"].items():
        log.info(
            "  %-28s %9d %12d %12d %10s",
            model,
            entry["requests"],
            entry["input_tokens"],
            entry["output_tokens_expected"],
            entry["basis"],
        )
    log.info(
        "  expected $%.4f, ceiling $%.4f (at max_tokens), synchronous would be $%.4f",
        attempt.estimate["expected"]["batch_usd"],
        attempt.estimate["ceiling"]["batch_usd"],
        attempt.estimate["expected"]["standard_usd"],
    )


async def submit_run(
    backend: BatchBackend,
    items: Iterable[LLMRequest | RejectedRow],
    run_dir: RunDirectory,
    *,
    run_key: RunKey,
    conn_id: str | None,
    tags: Mapping[str, str] | None = None,
    max_requests_per_batch: int | None = None,
    max_bytes_per_batch: int | None = None,
    max_cost_usd: float | None = None,
    cache: ResultCache | None = None,
    prices: PriceTable | None = None,
    on_created: OnCreated | None = None,
    allow_unknown_models: bool = False,
) -> RunHandle:
    """Split ``items`` into chunks in ``run_dir`` and create one batch per chunk, exactly once.

    Calling it again with the same ``run_key`` and the same input re-attaches to the batches
    already created and creates only the missing ones. Raises ``LedgerConflictError`` when the run
    folder holds another task's or another input's ledger, and ``BudgetExceededError`` before any
    paid call when the estimate is over ``max_cost_usd``. Requests for a model the provider is not
    known to serve are rejected unless ``allow_unknown_models``. Requests answered before are served from
    ``cache`` and not sent. ``on_created`` is called once per batch actually created (never for
    one re-attached), e.g. to count it in metrics.
    """
    ledger = Ledger.load(run_dir)
    if ledger is not None:
        ledger.check_owner(run_key, backend.provider, run_dir)
    if ledger is None or 1 not in ledger.attempts:
        first = _intake(
            backend,
            items,
            run_dir,
            cache=cache,
            prices=prices or default_price_table(),
            max_requests_per_batch=max_requests_per_batch,
            max_bytes_per_batch=max_bytes_per_batch,
            allow_unknown_models=allow_unknown_models,
        )
        first.tags = dict(tags or {})
        ledger = ledger or Ledger(run_key=run_key, provider=backend.provider)
        ledger.attempts[1] = first
        ledger.save(run_dir)
        log.info(
            "Split %d input rows into %d chunks: %d rejected (see %s), %d served from the cache",
            first.inputs,
            len(first.chunks),
            first.rejected,
            run_dir.rejects,
            first.cached,
        )
        _log_estimate(first)
    else:
        first = ledger.attempts[1]
        if input_fingerprint(items) != first.input_fingerprint:
            raise LedgerConflictError(
                f"{run_dir} already holds the ledger of a different input for this task. The "
                "input changed since its batches were created: delete that folder to start over, "
                "or point run_path elsewhere."
            )
        log.info("Re-attaching to the ledger in %s (%d chunks)", run_dir, len(first.chunks))
    _check_budget(run_dir, first, max_cost_usd)
    await submit_pending(backend, ledger, run_dir, attempt=1, tags=tags or {}, on_created=on_created)
    cache_path = str(cache.root) if cache is not None else None
    return handle_for(ledger, run_dir, attempt=1, conn_id=conn_id, cache_path=cache_path)


def handle_for(
    ledger: Ledger,
    run_dir: RunDirectory,
    *,
    attempt: int,
    conn_id: str | None,
    cache_path: str | None = None,
) -> RunHandle:
    entry = ledger.attempts[attempt]
    first = ledger.attempts[1]
    return RunHandle(
        run_path=str(run_dir.root),
        provider=ledger.provider,
        conn_id=conn_id,
        cache_path=cache_path,
        attempt=attempt,
        batches=[c.batch for c in entry.chunks if c.batch is not None],
        counts=InputCounts(
            inputs=first.inputs,
            rejected=first.rejected,
            cached=first.cached,
            submitted=sum(c.request_count for c in entry.chunks),
        ),
    )


async def submit_pending(
    backend: BatchBackend,
    ledger: Ledger,
    run_dir: RunDirectory,
    *,
    attempt: int,
    tags: Mapping[str, str],
    on_created: OnCreated | None = None,
) -> None:
    """Create a batch for every chunk of ``attempt`` the ledger has none for, recording each."""
    entry = ledger.attempts[attempt]
    total = len(entry.chunks)
    for chunk in entry.chunks:
        if chunk.batch is not None:
            continue
        chunk_id_tags = chunk_tags(ledger.run_key, attempt, chunk.index, entry.fingerprint)
        all_tags = {**tags, **chunk_id_tags}
        if chunk.intent_at is not None:
            found = await _find_created(backend, ledger, run_dir, chunk, chunk_id_tags)
            if found is not None:
                chunk.batch, chunk.matched_by = found
                ledger.save(run_dir)
                log.info(
                    "Chunk %d/%d: re-attached to batch %s created before a restart (matched by %s)",
                    chunk.index + 1,
                    total,
                    chunk.batch.batch_id,
                    chunk.matched_by,
                )
                continue
        chunk.intent_at = utcnow()
        ledger.save(run_dir)
        ref = await backend.submit(_chunk_of(run_dir, chunk), tags=all_tags)
        chunk.batch = ref
        ledger.save(run_dir)
        if on_created is not None:
            on_created(ref)
        log.info(
            "Chunk %d/%d: created batch %s (%d requests, %.1f MB)",
            chunk.index + 1,
            total,
            ref.batch_id,
            chunk.request_count,
            chunk.byte_size / 1e6,
        )


def _chunk_of(run_dir: RunDirectory, chunk: LedgerChunk) -> Chunk:
    return Chunk(
        index=chunk.index,
        path=run_dir.root / chunk.part,
        request_count=chunk.request_count,
        byte_size=chunk.byte_size,
        group=chunk.group,
        model=chunk.model,
        endpoint=chunk.endpoint,
    )


def part_custom_ids(backend: BatchBackend, run_dir: RunDirectory, part: str) -> list[str]:
    """custom_ids of a part file, in file order."""
    return list(expected_ids(run_dir.root / part, backend))


async def _find_created(
    backend: BatchBackend,
    ledger: Ledger,
    run_dir: RunDirectory,
    chunk: LedgerChunk,
    chunk_id_tags: Mapping[str, str],
) -> tuple[BatchRef, str] | None:
    assert chunk.intent_at is not None
    claimed = ledger.claimed_batch_ids()
    found = await backend.find(tags=chunk_id_tags, created_after=chunk.intent_at - _CLOCK_SKEW)
    candidates = [ref for ref in found if ref.batch_id not in claimed]
    if backend.keeps_tags:
        return (candidates[0].model_copy(update={"chunk_index": chunk.index}), "tags") if candidates else None
    same_size = [ref for ref in candidates if ref.request_count == chunk.request_count]
    if not same_size:
        return None
    expected = set(part_custom_ids(backend, run_dir, chunk.part))
    for ref in same_size:
        state = await backend.status(ref.batch_id)
        if state.is_terminal and await backend.result_ids(ref) == expected:
            return ref.model_copy(update={"chunk_index": chunk.index}), "custom_ids"
    earliest = min(same_size, key=lambda ref: ref.created_at)
    return earliest.model_copy(update={"chunk_index": chunk.index}), "request_count"
