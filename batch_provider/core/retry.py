"""Resubmit only what failed for a reason resending can fix, and close the run with a dead letter.

Invariants:
- Attempt N+1 holds exactly the retryable errors of attempt N (per-item server errors, rate
  limits, expiry, cancel), copied from attempt N's part files with only the wire id changed (one
  of attempt N+1, mapped back to the same row id by the new part's sidecar): the request is the
  same, only its batch is new. Non-retryable errors are never resent.
- Attempts go through the same ledger as the first submit, so a retried or restarted retry task
  re-attaches instead of paying again.
- An attempt whose wait passed its deadline (``attempt-N/deadline.json``) is resubmitted only
  when ``resubmit_after_deadline``; otherwise its rows cut off go to the dead letter, each line
  saying why (``dead_letter_reason``).
- A subset of a valid chunk is a valid chunk (same group, fewer requests and bytes), so retries
  keep attempt N's chunking and need no new split.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Mapping

from batch_provider.core.claims import claim_run, publish_split
from batch_provider.core.collection import RunSummary, rebuild_outputs
from batch_provider.core.contract import BatchBackend
from batch_provider.core.deadline import DeadlineRecord, load_deadline
from batch_provider.core.handle import RunHandle
from batch_provider.core.ledger import Ledger, LedgerAttempt, LedgerChunk, LedgerConflictError, RunKey
from batch_provider.core.models import ItemStatus, ResultRecord
from batch_provider.core.part_files import iter_part_lines, part_ids_path
from batch_provider.core.rundir import RunDirectory, atomic_write, remove_stale_temps
from batch_provider.core.submission import OnCreated, handle_for, part_ids, submit_pending
from batch_provider.core.sync_journal import fallback_notes
from batch_provider.core.wire_ids import SIDECAR_HEADER, sidecar_line, swap_wire_id, wire_id

log = logging.getLogger(__name__)


def _retryable_ids(run_dir: RunDirectory, attempt: int) -> set[str]:
    ids: set[str] = set()
    path = run_dir.attempt_errors(attempt)
    if not path.exists():
        raise FileNotFoundError(
            f"attempt {attempt} of {run_dir} has not been collected yet; collect it first"
        )
    with path.open("rb") as fh:
        for line in fh:
            if not line.strip():
                continue
            record = json.loads(line)
            if (record.get("error") or {}).get("retryable"):
                ids.add(record["custom_id"])
    return ids


def _write_retry_parts(
    backend: BatchBackend, run_dir: RunDirectory, ledger: Ledger, attempt: int, wanted: set[str]
) -> LedgerAttempt:
    """Attempt ``attempt``'s part files: the lines of the previous attempt whose row id is in
    ``wanted``, each under a new wire id of this attempt (same length, so sizes do not change)."""
    previous = ledger.attempts[attempt - 1]
    parts_dir = run_dir.requests_dir(attempt)
    parts_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(parts_dir)
    token = ledger.wire_token
    chunks: list[LedgerChunk] = []
    digest = hashlib.sha256()
    position = 0
    for old in previous.chunks:
        ids = part_ids(backend, run_dir, old.part)
        picked: list[tuple[bytes, str, str, bool]] = []
        for line in iter_part_lines(run_dir.root / old.part):
            wire = backend.custom_id_of(line)
            row = ids.rows.get(wire, wire)
            if row not in wanted:
                continue
            new = wire
            if token is not None:
                new = wire_id(token, attempt, position)
                line = swap_wire_id(line, wire, new)
            position += 1
            picked.append((line, new, row, ids.wants.get(wire, False)))
        if not picked:
            continue
        index = len(chunks)
        path = parts_dir / f"part-{index:05d}.jsonl"
        with atomic_write(path) as out, atomic_write(part_ids_path(path)) as sidecar:
            sidecar.write(SIDECAR_HEADER + b"\n")
            for line, new, row, wants_json in picked:
                out.write(line + b"\n")
                sidecar.write(sidecar_line(wants_json, new, row) + b"\n")
                digest.update(line + b"\n")
        chunks.append(
            old.model_copy(
                update={
                    "index": index,
                    "part": run_dir.relative(path),
                    "request_count": len(picked),
                    "byte_size": sum(len(line) + 1 for line, *_ in picked),
                    "intent_at": None,
                    "batch": None,
                    "matched_by": None,
                }
            )
        )
    return LedgerAttempt(attempt=attempt, fingerprint=digest.hexdigest(), chunks=chunks)


async def resubmit_retryable(
    backend: BatchBackend,
    handle: RunHandle,
    run_dir: RunDirectory,
    *,
    run_key: RunKey,
    tags: Mapping[str, str] | None = None,
    max_attempts: int,
    on_created: OnCreated | None = None,
    resubmit_after_deadline: bool = True,
) -> RunHandle | None:
    """Create attempt ``handle.attempt + 1`` from the retryable errors of ``handle``'s attempt.

    Returns its handle, or None when nothing is retryable, ``max_attempts`` is reached, or the
    attempt's wait passed its deadline and ``resubmit_after_deadline`` is off.
    """
    ledger = Ledger.load(run_dir)
    if ledger is None:
        raise FileNotFoundError(f"{run_dir} has no ledger.json: it was not written by a submit task")
    ledger.check_owner(run_key, backend.provider, run_dir)
    remove_stale_temps(run_dir.root)
    attempt = handle.attempt + 1
    if attempt > max_attempts:
        return None
    if ledger.wire_token is None:  # a folder from before wire ids: its retries get them
        run = await claim_run(run_dir, run_key.model_dump(), backend.provider.value)
        ledger.wire_token = run.token
    if attempt not in ledger.attempts:
        passed = load_deadline(run_dir, handle.attempt)
        if passed is not None and not resubmit_after_deadline:
            log.warning("%s: its rows not answered are not sent again", passed.reason())
            return None
        wanted = _retryable_ids(run_dir, handle.attempt)
        if not wanted:
            return None
        entry = _write_retry_parts(backend, run_dir, ledger, attempt, wanted)
        won, published = await publish_split(run_dir, attempt, entry.model_dump(mode="json"))
        if not won:
            theirs = LedgerAttempt.model_validate(published)
            if theirs.fingerprint != entry.fingerprint:
                raise LedgerConflictError(
                    f"another retry of this run published a different attempt {attempt} in {run_dir} "
                    "at the same time; run this task again to re-attach to it"
                )
            entry = theirs
        ledger.attempts[attempt] = entry
        ledger.save(run_dir)
        log.info("Attempt %d: resubmitting %d retryable requests", attempt, len(wanted))
    else:
        log.info("Attempt %d is in the ledger already: re-attaching", attempt)
    await submit_pending(backend, ledger, run_dir, attempt=attempt, tags=tags or {}, on_created=on_created)
    return handle_for(ledger, run_dir, attempt=attempt, conn_id=handle.conn_id, cache_path=handle.cache_path)


def write_dead_letter(
    backend: BatchBackend, run_dir: RunDirectory, *, max_attempts: int | None = None
) -> RunSummary:
    """Close the run: every unresolved item goes to ``dead_letter.jsonl`` with the reason it was
    not sent again; the manifest is final."""
    ledger = Ledger.load(run_dir)
    if ledger is None:
        raise FileNotFoundError(f"{run_dir} has no ledger.json: it was not written by a submit task")
    remove_stale_temps(run_dir.root)
    reason = dead_letter_reasons(run_dir, max_attempts=max_attempts)
    return rebuild_outputs(backend, run_dir, ledger, dead_letter=True, dead_letter_reason=reason)


def dead_letter_reasons(run_dir: RunDirectory, *, max_attempts: int | None) -> Callable[[ResultRecord], str]:
    """Why an unresolved item was not sent again: not retryable, cut off by a passed deadline,
    or no attempts left."""
    deadlines: dict[int, DeadlineRecord | None] = {}
    fallbacks: dict[int, tuple[dict[str, str], str | None]] = {}

    def reason(record: ResultRecord) -> str:
        if record.status is ItemStatus.INVALID_OUTPUT and not record.retryable and record.error:
            return f"answer not valid ({record.error.type}): {record.error.message}"
        if not record.retryable:
            kind = record.error.type if record.error else record.status.value
            return f"not retryable ({kind}): resending the same request cannot succeed"
        if record.attempt not in deadlines:
            deadlines[record.attempt] = load_deadline(run_dir, record.attempt)
        passed = deadlines[record.attempt]
        if record.attempt not in fallbacks:
            fallbacks[record.attempt] = fallback_notes(run_dir, record.attempt)
        unanswered, refused = fallbacks[record.attempt]
        cut = f"{passed.reason()}; " if passed is not None else ""
        if record.custom_id in unanswered:
            return f"{cut}the sync fallback got no answer: {unanswered[record.custom_id]}"
        if refused:
            return f"{cut}the sync fallback was not started: {refused}"
        if passed is not None:
            return f"{passed.reason()}; {record.status.value} then, not sent again"
        limit = f" of max_attempts={max_attempts}" if max_attempts else ""
        return f"still {record.status.value} after attempt {record.attempt}{limit}"

    return reason
