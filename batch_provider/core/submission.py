"""Submit a run's requests as provider batches, idempotently.

Order of durable writes, per chunk: part file → split claim and ledger chunk → chunk claim (the
intent) → create call → the batch in the claim and the ledger; once every chunk of the attempt
has its batch, the part files are packed (:mod:`batch_provider.core.part_files`). A rerun after
a crash at any point therefore either finds the batch, or finds the intent and looks the batch
up at the provider before creating one, on evidence only:

- providers that keep tags (OpenAI metadata, Bedrock job tags and clientRequestToken, Gemini
  display name): the chunk's tags identify its batch exactly;
- providers that do not (Anthropic): a batch of the chunk's size created after the intent, not
  claimed by another chunk, whose results answer exactly the chunk's wire ids once it has ended;
  one still running is attached unverified and checked at collect
  (:func:`batch_provider.core.reattach.find_created`).

Concurrent submits of one run (a zombie beside its retry) meet at the claims
(:mod:`batch_provider.core.claims`): one split, and one creator per chunk; the others wait for
its batch.

Invariants:
- Attempt 1's part files come from one intake pass (:mod:`batch_provider.core.intake`) and are
  recorded in the ledger before any create call. Once the ledger holds attempt 1, a rerun never
  splits again: the same input (by its fingerprint) re-attaches, another one is refused.
- A chunk whose batch is in the ledger is never submitted again, and a batch already claimed by a
  chunk is never matched to another one.
- The share of rejected rows (:func:`check_rejected_share`: by default a run whose every row is
  rejected) and the budget are checked before the run's first create call only: once a chunk has
  an intent, its batch may exist, and refusing then would leave the run half submitted. With
  ``max_cost_usd`` set, a model without a price fails the check (its cost is unknown, so the cap
  cannot hold); without a cap, unpriced models are warned about before sending.
- ``on_created`` is called once per batch actually created, never for one re-attached.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Mapping

from batch_provider.core.cache import CACHE_BLOCK, ResultCache
from batch_provider.core.claims import HeldClaim, claim_chunk, claim_run, publish_split
from batch_provider.core.contract import BatchBackend, Chunk
from batch_provider.core.handle import InputCounts, RunHandle
from batch_provider.core.heap import heap_frozen
from batch_provider.core.intake import input_fingerprint, intake
from batch_provider.core.ledger import (
    Ledger,
    LedgerAttempt,
    LedgerChunk,
    LedgerConflictError,
    RunKey,
    chunk_tags,
)
from batch_provider.core.models import BatchRef, LLMRequest, Provider, RejectedRow
from batch_provider.core.part_files import pack_parts
from batch_provider.core.pricing import PriceTable, default_price_table
from batch_provider.core.reattach import find_created
from batch_provider.core.reconcile import read_part_ids
from batch_provider.core.rejects import check_rejected_share, describe_reasons, reject_reasons
from batch_provider.core.rundir import RunDirectory
from batch_provider.core.wire_ids import PartIds

log = logging.getLogger(__name__)

OnCreated = Callable[[BatchRef], None]

__all__ = [
    "CACHE_BLOCK",
    "BudgetExceededError",
    "OnCreated",
    "RunKey",
    "handle_for",
    "input_fingerprint",
    "part_custom_ids",
    "part_ids",
    "submit_pending",
    "submit_run",
]


class BudgetExceededError(RuntimeError):
    """The run's estimated cost is over ``max_cost_usd``, or unknown (a model without a price);
    no batch was created."""


HOW_TO_PRICE = (
    'Give it a price in a JSON file of rows like {"rows": [{"provider": ..., "model": ..., '
    '"input": <USD per 1M tokens>, "output": <USD per 1M tokens>}]} named by '
    "$BATCH_PROVIDER_PRICE_TABLE (see README, Cost), or check the model name."
)


def _check_budget(run_dir: RunDirectory, attempt: LedgerAttempt, max_cost_usd: float | None) -> None:
    """Refuse to create any batch when the estimate's ceiling is over ``max_cost_usd``."""
    if attempt.estimate is None:
        return
    unpriced = attempt.estimate["ceiling"].get("unpriced_models") or []
    if unpriced and max_cost_usd is None:
        log.warning(
            "No price for %s: the cost of those requests is unknown and left out of every figure. %s",
            ", ".join(unpriced),
            HOW_TO_PRICE,
        )
    if max_cost_usd is None:
        return
    if any(chunk.intent_at is not None for chunk in attempt.chunks):
        log.warning("Budget not re-checked: batches of %s were already being created", run_dir)
        return
    if unpriced:
        raise BudgetExceededError(
            f"max_cost_usd=${max_cost_usd:.4f} is set but there is no price for "
            f"{', '.join(repr(m) for m in unpriced)}, so the cost cannot be bounded; nothing was sent. "
            f"{HOW_TO_PRICE}"
        )
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
    already created and creates only the missing ones; so do concurrent calls (every one returns
    the same handle). Raises ``LedgerConflictError`` when the run
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
    run = await claim_run(run_dir, run_key.model_dump(), backend.provider.value)
    owner = Ledger(run_key=RunKey.model_validate(run.run_key), provider=Provider(run.provider))
    owner.check_owner(run_key, backend.provider, run_dir)
    ledger = ledger or owner
    ledger.wire_token = run.token
    if 1 not in ledger.attempts:
        with heap_frozen():
            first = intake(
                backend,
                items,
                run_dir,
                cache=cache,
                prices=prices or default_price_table(),
                max_requests_per_batch=max_requests_per_batch,
                max_bytes_per_batch=max_bytes_per_batch,
                allow_unknown_models=allow_unknown_models,
                wire_token=run.token,
            )
        first.tags = dict(tags or {})
        won, published = await publish_split(run_dir, 1, first.model_dump(mode="json"))
        if not won:
            theirs = LedgerAttempt.model_validate(published)
            if (theirs.fingerprint, theirs.input_fingerprint) != (first.fingerprint, first.input_fingerprint):
                raise LedgerConflictError(
                    f"another submit of this run split a different input into {run_dir} at the same "
                    "time (or the result cache changed meanwhile); its split is the one in use. "
                    "Run this task again: it will re-attach to that split if the input is the same."
                )
            first = theirs
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
    """Create a batch for every chunk of ``attempt`` the ledger has none for, recording each.

    Each chunk is claimed first (:func:`claim_chunk`): the winner creates the batch, or, taking
    over from a creator that died, first looks for the batch that creator may have made; a
    process that loses the claim waits for the winner's batch and records it."""
    entry = ledger.attempts[attempt]
    total = len(entry.chunks)
    for chunk in entry.chunks:
        if chunk.batch is not None:
            continue
        chunk_id_tags = chunk_tags(ledger.run_key, attempt, chunk.index, entry.fingerprint, ledger.wire_token)
        all_tags = {**tags, **chunk_id_tags}
        outcome = await claim_chunk(run_dir, attempt, chunk.index, earliest_intent=chunk.intent_at)
        if not isinstance(outcome, HeldClaim):
            chunk.intent_at = chunk.intent_at or outcome.intent_at
            chunk.batch, chunk.matched_by = outcome.batch, outcome.matched_by
            ledger.save(run_dir)
            assert chunk.batch is not None
            log.info(
                "Chunk %d/%d: batch %s was created by another submit of this run",
                chunk.index + 1,
                total,
                chunk.batch.batch_id,
            )
            continue
        held = outcome
        try:
            looked_up = held.claim.generation > 0 or chunk.intent_at is not None
            chunk.intent_at = held.claim.intent_at
            if looked_up:
                found = await find_created(backend, ledger, run_dir, chunk, chunk_id_tags)
                if found is not None:
                    chunk.batch, chunk.matched_by = found
                    held.record(chunk.batch, chunk.matched_by)
                    ledger.save(run_dir)
                    log.info(
                        "Chunk %d/%d: re-attached to batch %s created before a restart (matched by %s)",
                        chunk.index + 1,
                        total,
                        chunk.batch.batch_id,
                        chunk.matched_by,
                    )
                    continue
            ledger.save(run_dir)
            async with held.heartbeat():
                ref = await backend.submit(_chunk_of(run_dir, chunk), tags=all_tags)
            chunk.batch = ref
            held.record(ref, None)
        except Exception:
            with contextlib.suppress(Exception):
                held.abandon()
            raise
        finally:
            held.release()
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
    # Every chunk now has its batch in the saved ledger: no create call needs these parts plain.
    pack_parts(run_dir.root / chunk.part for chunk in entry.chunks)


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


def part_ids(backend: BatchBackend, run_dir: RunDirectory, part: str) -> PartIds:
    """Wire ids and row ids of a part file, in file order."""
    return read_part_ids(run_dir.root / part, backend)


def part_custom_ids(backend: BatchBackend, run_dir: RunDirectory, part: str) -> list[str]:
    """Row ids (the rows' own custom_ids) of a part file, in file order."""
    return part_ids(backend, run_dir, part).row_ids()
