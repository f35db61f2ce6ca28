"""Resubmit only what failed for a reason resending can fix, and close the run with a dead letter.

Invariants:
- Attempt N+1 holds exactly the retryable errors of attempt N (per-item server errors, rate
  limits, expiry, cancel), copied byte for byte from attempt N's part files: the request is the
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

from batch_provider.backends.base import BatchBackend
from batch_provider.core.collection import RunSummary, rebuild_outputs
from batch_provider.core.deadline import DeadlineRecord, load_deadline
from batch_provider.core.handle import RunHandle
from batch_provider.core.ledger import Ledger, LedgerAttempt, LedgerChunk, RunKey
from batch_provider.core.models import ResultRecord
from batch_provider.core.rundir import RunDirectory, atomic_write, remove_stale_temps, remove_tree
from batch_provider.core.submission import OnCreated, handle_for, submit_pending

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
    previous = ledger.attempts[attempt - 1]
    parts_dir = run_dir.requests_dir(attempt)
    remove_tree(parts_dir)
    parts_dir.mkdir(parents=True, exist_ok=True)
    chunks: list[LedgerChunk] = []
    digest = hashlib.sha256()
    for old in previous.chunks:
        lines = []
        with (run_dir.root / old.part).open("rb") as fh:
            for raw in fh:
                line = raw.rstrip(b"\n")
                if line and backend.custom_id_of(line) in wanted:
                    lines.append(line)
        if not lines:
            continue
        index = len(chunks)
        path = parts_dir / f"part-{index:05d}.jsonl"
        with atomic_write(path) as out:
            for line in lines:
                out.write(line + b"\n")
                digest.update(line + b"\n")
        chunks.append(
            old.model_copy(
                update={
                    "index": index,
                    "part": run_dir.relative(path),
                    "request_count": len(lines),
                    "byte_size": sum(len(line) + 1 for line in lines),
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
    if attempt not in ledger.attempts:
        passed = load_deadline(run_dir, handle.attempt)
        if passed is not None and not resubmit_after_deadline:
            log.warning("%s: its rows not answered are not sent again", passed.reason())
            return None
        wanted = _retryable_ids(run_dir, handle.attempt)
        if not wanted:
            return None
        ledger.attempts[attempt] = _write_retry_parts(backend, run_dir, ledger, attempt, wanted)
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

    def reason(record: ResultRecord) -> str:
        if not record.retryable:
            kind = record.error.type if record.error else record.status.value
            return f"not retryable ({kind}): resending the same request cannot succeed"
        if record.attempt not in deadlines:
            deadlines[record.attempt] = load_deadline(run_dir, record.attempt)
        passed = deadlines[record.attempt]
        if passed is not None:
            return f"{passed.reason()}; {record.status.value} then, not sent again"
        limit = f" of max_attempts={max_attempts}" if max_attempts else ""
        return f"still {record.status.value} after attempt {record.attempt}{limit}"

    return reason
