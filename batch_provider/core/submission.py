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

import logging
import uuid
from collections.abc import Iterable, Mapping
from datetime import timedelta
from typing import Any

from batch_provider.backends.base import BatchBackend, Chunk
from batch_provider.core.handle import InputCounts, RunHandle
from batch_provider.core.jsonl import iter_path_lines
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
from batch_provider.core.rundir import RunDirectory, remove_tree
from batch_provider.core.split import RequestSplitter

log = logging.getLogger(__name__)

# Clocks of this host and the provider may disagree; look a little before the recorded intent.
_CLOCK_SKEW = timedelta(minutes=5)

__all__ = ["RunKey", "submit_pending", "submit_run"]


def _relative(run_dir: RunDirectory, path: Any) -> str:
    return str(path)[len(str(run_dir.root)) :].lstrip("/")


def _split_into(
    backend: BatchBackend,
    items: Iterable[LLMRequest | RejectedRow],
    run_dir: RunDirectory,
    parts_dir: Any,
    rejects_path: Any,
    *,
    max_requests_per_batch: int | None,
    max_bytes_per_batch: int | None,
) -> LedgerAttempt:
    """Split ``items`` into part files under ``parts_dir`` and rejects into ``rejects_path``."""
    limits = backend.limits.lowered(
        max_requests_per_batch=max_requests_per_batch, max_bytes_per_batch=max_bytes_per_batch
    )
    parts_dir.mkdir(parents=True, exist_ok=True)
    counts = {"inputs": 0, "rejected": 0}
    rejects_path.parent.mkdir(parents=True, exist_ok=True)
    with rejects_path.open("wb") as rejects:

        def on_reject(row: RejectedRow) -> None:
            counts["rejected"] += 1
            rejects.write(row.to_record().model_dump_json(exclude_none=True).encode() + b"\n")

        def counted(source: Iterable[LLMRequest | RejectedRow]) -> Iterable[LLMRequest]:
            for item in source:
                counts["inputs"] += 1
                if isinstance(item, RejectedRow):
                    on_reject(item)
                else:
                    yield item

        splitter = RequestSplitter(backend, parts_dir, limits=limits, on_reject=on_reject)
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
            for chunk in splitter.split(counted(items))
        ]
    return LedgerAttempt(
        attempt=1,
        fingerprint=splitter.fingerprint,
        chunks=chunks,
        inputs=counts["inputs"],
        rejected=counts["rejected"],
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
) -> RunHandle:
    """Split ``items`` into chunks in ``run_dir`` and create one batch per chunk, exactly once.

    Calling it again with the same ``run_key`` and the same input re-attaches to the batches
    already created and creates only the missing ones. Raises ``LedgerConflictError`` when the run
    folder holds another task's or another input's ledger.
    """
    ledger = Ledger.load(run_dir)
    if ledger is not None:
        ledger.check_owner(run_key, backend.provider, run_dir)
    split_options = {
        "max_requests_per_batch": max_requests_per_batch,
        "max_bytes_per_batch": max_bytes_per_batch,
    }
    if ledger is None or 1 not in ledger.attempts:
        remove_tree(run_dir.requests_dir(1))
        first = _split_into(
            backend, items, run_dir, run_dir.requests_dir(1), run_dir.rejects, **split_options
        )
        ledger = ledger or Ledger(run_key=run_key, provider=backend.provider)
        ledger.attempts[1] = first
        ledger.save(run_dir)
        log.info(
            "Split %d input rows into %d chunks (%d rejected, see %s)",
            first.inputs,
            len(first.chunks),
            first.rejected,
            run_dir.rejects,
        )
    else:
        staging = run_dir.root / f".staging-{uuid.uuid4().hex[:12]}"
        try:
            again = _split_into(
                backend, items, run_dir, staging / "requests", staging / "rejects.jsonl", **split_options
            )
        finally:
            remove_tree(staging)
        first = ledger.attempts[1]
        if again.fingerprint != first.fingerprint:
            raise LedgerConflictError(
                f"{run_dir} already holds the ledger of a different input for this task "
                f"(fingerprint {first.fingerprint[:12]} there, {again.fingerprint[:12]} now). The "
                "input changed since the batches were created: clear them by deleting that folder, "
                "or point run_path elsewhere."
            )
        log.info("Re-attaching to the ledger in %s (%d chunks)", run_dir, len(first.chunks))
    await submit_pending(backend, ledger, run_dir, attempt=1, tags=tags or {})
    return handle_for(ledger, run_dir, attempt=1, conn_id=conn_id)


def handle_for(ledger: Ledger, run_dir: RunDirectory, *, attempt: int, conn_id: str | None) -> RunHandle:
    entry = ledger.attempts[attempt]
    first = ledger.attempts[1]
    return RunHandle(
        run_path=str(run_dir.root),
        provider=ledger.provider,
        conn_id=conn_id,
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
    return [backend.custom_id_of(line) for line in iter_path_lines(run_dir.root / part)]


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
