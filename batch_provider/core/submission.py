"""Submit a run's requests as provider batches, idempotently.

Order of durable writes, per chunk: part file → ledger chunk → ledger ``intent_at`` → create call →
ledger ``batch``. A rerun after a crash at any point therefore either finds the batch in the ledger,
or finds the intent and looks the batch up at the provider before creating one:

- providers that keep tags (OpenAI metadata): the chunk's tags identify its batch exactly;
- providers that do not (Anthropic): batches created after the intent with the chunk's request
  count, not claimed by another chunk; among several, the one whose custom_ids match once ended,
  else the earliest.

Invariants:
- Attempt 1's part files come from one intake pass (:mod:`batch_provider.core.intake`) and are
  recorded in the ledger before any create call. Once the ledger holds attempt 1, a rerun never
  splits again: the same input (by its fingerprint) re-attaches, another one is refused.
- A chunk whose batch is in the ledger is never submitted again, and a batch already claimed by a
  chunk is never matched to another one.
- The share of rejected rows (:func:`check_rejected_share`: by default a run whose every row is
  rejected) and the budget are checked before the run's first create call only: once a chunk has
  an intent, its batch may exist, and refusing then would leave the run half submitted.
- ``on_created`` is called once per batch actually created, never for one re-attached.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from datetime import timedelta

from batch_provider.backends.base import BatchBackend, Chunk
from batch_provider.core.cache import CACHE_BLOCK, ResultCache
from batch_provider.core.handle import InputCounts, RunHandle
from batch_provider.core.intake import input_fingerprint, intake
from batch_provider.core.ledger import (
    Ledger,
    LedgerAttempt,
    LedgerChunk,
    LedgerConflictError,
    RunKey,
    chunk_tags,
    utcnow,
)
from batch_provider.core.models import BatchRef, LLMRequest, RejectedRow
from batch_provider.core.pricing import PriceTable, default_price_table
from batch_provider.core.reconcile import expected_ids
from batch_provider.core.rejects import check_rejected_share, describe_reasons, reject_reasons
from batch_provider.core.rundir import RunDirectory

log = logging.getLogger(__name__)

OnCreated = Callable[[BatchRef], None]

# Clocks of this host and the provider may disagree; look a little before the recorded intent.
_CLOCK_SKEW = timedelta(minutes=5)

__all__ = [
    "CACHE_BLOCK",
    "BudgetExceededError",
    "OnCreated",
    "RunKey",
    "handle_for",
    "input_fingerprint",
    "part_custom_ids",
    "submit_pending",
    "submit_run",
]


class BudgetExceededError(RuntimeError):
    """The run's estimated cost is over ``max_cost_usd``; no batch was created."""


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
    max_rejected_fraction: float | None = None,
) -> RunHandle:
    """Split ``items`` into chunks in ``run_dir`` and create one batch per chunk, exactly once.

    Calling it again with the same ``run_key`` and the same input re-attaches to the batches
    already created and creates only the missing ones. Raises ``LedgerConflictError`` when the run
    folder holds another task's or another input's ledger, and ``BudgetExceededError`` before any
    paid call when the estimate is over ``max_cost_usd``. Requests for a model the provider is not
    known to serve are rejected unless ``allow_unknown_models``. Requests answered before are served from
    ``cache`` and not sent. ``on_created`` is called once per batch actually created (never for
    one re-attached), e.g. to count it in metrics. Raises ``TooManyRejectsError`` before any
    paid call when every row was rejected, or more than ``max_rejected_fraction`` of them.
    """
    ledger = Ledger.load(run_dir)
    if ledger is not None:
        ledger.check_owner(run_key, backend.provider, run_dir)
    if ledger is None or 1 not in ledger.attempts:
        first = intake(
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
        if first.rejected:
            log.warning(
                "%d of %d rows rejected; top reasons: %s",
                first.rejected,
                first.inputs,
                describe_reasons(reject_reasons(run_dir.rejects)),
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
    if not any(chunk.intent_at is not None for chunk in first.chunks):
        check_rejected_share(first.inputs, first.rejected, max_rejected_fraction, run_dir.rejects)
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
