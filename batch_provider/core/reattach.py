"""Finding the batch a creator that died may have made for a chunk, before creating one again.

Invariant: a batch is attached to a chunk on evidence only (its tags, or its answers to exactly
the chunk's wire ids), never to a batch another chunk of the run has claimed.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta

from batch_provider.core.contract import BatchBackend
from batch_provider.core.ledger import Ledger, LedgerChunk
from batch_provider.core.models import BatchRef
from batch_provider.core.reconcile import read_part_ids
from batch_provider.core.rundir import RunDirectory

# Clocks of this host and the provider may disagree; look a little before the recorded intent.
_CLOCK_SKEW = timedelta(minutes=5)


async def find_created(
    backend: BatchBackend,
    ledger: Ledger,
    run_dir: RunDirectory,
    chunk: LedgerChunk,
    chunk_id_tags: Mapping[str, str],
) -> tuple[BatchRef, str] | None:
    """The batch a creator that died may have made for ``chunk``, on evidence only: the chunk's
    tags where the provider keeps them; elsewhere (Anthropic) a batch of the chunk's size created
    after its intent, whose results, once it has ended, answer exactly the chunk's wire ids. A
    candidate still running cannot be checked yet: it is attached as ``unverified`` and collect
    takes only the answers to this chunk's wire ids (another run's batch answers none of them, so
    its rows go to the retry; they are never given another run's answers)."""
    assert chunk.intent_at is not None
    claimed = ledger.claimed_batch_ids()
    found = await backend.find(tags=chunk_id_tags, created_after=chunk.intent_at - _CLOCK_SKEW)
    candidates = [ref for ref in found if ref.batch_id not in claimed]
    if backend.keeps_tags:
        return (candidates[0].model_copy(update={"chunk_index": chunk.index}), "tags") if candidates else None
    same_size = [ref for ref in candidates if ref.request_count == chunk.request_count]
    same_size.sort(key=lambda ref: ref.created_at)
    if not same_size:
        return None
    expected = set(read_part_ids(run_dir.root / chunk.part, backend).wants)
    running: list[BatchRef] = []
    for ref in same_size:
        state = await backend.status(ref.batch_id)
        if not state.is_terminal:
            running.append(ref)
        elif await backend.result_ids(ref) == expected:
            return ref.model_copy(update={"chunk_index": chunk.index}), "wire_ids"
    if not running or ledger.wire_token is None:
        # Without wire ids of its own (a folder from before them), a running batch proves nothing.
        return None
    return running[0].model_copy(update={"chunk_index": chunk.index}), "unverified"


__all__ = ["find_created"]
