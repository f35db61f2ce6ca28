"""The journal of a sync fallback's answers, and what the run's files and manifest take from it.

A sync fallback (:mod:`batch_provider.core.sync_fallback`) sends the rows an attempt's batches
did not answer to the provider's synchronous API. Each answer is paid at full price the moment
it arrives, so it is kept at once: the journal is a folder of small segment files
(``attempt-N/sync/answers-<seq>.jsonl``), each written atomically (:func:`atomic_write`) with the
answers that arrived since the previous one, one result record a line.

Invariants:
- A segment is complete or absent: a kill leaves every committed answer readable, and a fallback
  resumed after it sends only rows without a committed answer. Answers received but not yet in
  a committed segment (at most one write's worth, plus the calls in flight) are sent again.
- A row is answered by sync at most once in the journal's reading: a second answer for the same
  row (which the rule above makes possible only after a kill) is ignored, the first kept.
- An answer that does not validate against the run's output type is journaled too, as its
  ``invalid_output`` record (it was paid: its usage is in the cost). It is never a success: the
  row's last such record, once it may not be sent again (not retryable), takes the place of the
  row's batch error in the run's errors file; a retryable one only counts towards
  ``retry_invalid_output`` when the fallback is resumed.
- ``refused.json`` beside the segments records a fallback the budget did not allow: its rows
  stay where the attempt's batches left them (retry or dead letter, as without a fallback).
- Sync answers are priced at synchronous prices: their ``Cost`` has ``batch_usd`` equal to
  ``standard_usd`` (what was paid), and the manifest says how much more that was than the
  same usage at batch prices (``extra_cost_usd``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from batch_provider.core.models import ItemStatus, ResultRecord, Usage
from batch_provider.core.pricing import Cost, CostTally, PriceTable, default_price_table
from batch_provider.core.rundir import RunDirectory, atomic_write, read_json, write_json_atomic

_SUCCEEDED = ItemStatus.SUCCEEDED.value


def sync_dir(run_dir: RunDirectory, attempt: int) -> Any:
    return run_dir.attempt_dir(attempt) / "sync"


def _segments(folder: Any) -> list[Any]:
    if not folder.exists():
        return []
    return sorted(
        (p for p in folder.iterdir() if p.name.startswith("answers-") and p.name.endswith(".jsonl")),
        key=lambda p: p.name,
    )


def _journal_lines(run_dir: RunDirectory, attempt: int) -> Iterator[tuple[str, bool, bytes]]:
    """(row id, is a success, record line) of every committed record, in commit order."""
    for segment in _segments(sync_dir(run_dir, attempt)):
        for line in segment.read_bytes().splitlines():
            if not line.strip():
                continue
            record = json.loads(line)
            yield record["custom_id"], record.get("status") == _SUCCEEDED, line + b"\n"


def read_answers(run_dir: RunDirectory, attempt: int) -> Iterator[tuple[str, bytes]]:
    """(row id, record line) of every committed valid answer of ``attempt``'s fallback, first one
    kept (``invalid_output`` answers are not answers: see :func:`read_invalid`)."""
    seen: set[str] = set()
    for row, ok, line in _journal_lines(run_dir, attempt):
        if ok and row not in seen:
            seen.add(row)
            yield row, line


def read_invalid(run_dir: RunDirectory, attempt: int) -> dict[str, list[bytes]]:
    """Row id → the ``invalid_output`` records of ``attempt``'s fallback for it, in commit order."""
    found: dict[str, list[bytes]] = {}
    for row, ok, line in _journal_lines(run_dir, attempt):
        if not ok:
            found.setdefault(row, []).append(line)
    return found


def is_final(line: bytes) -> bool:
    """Whether an ``invalid_output`` record may not be sent again (``retry_invalid_output`` spent)."""
    return not (json.loads(line).get("error") or {}).get("retryable")


class SyncJournal:
    """Appends answers of one attempt's fallback as atomic segments, numbered after those there."""

    def __init__(self, run_dir: RunDirectory, attempt: int) -> None:
        self.folder = sync_dir(run_dir, attempt)
        self.folder.mkdir(parents=True, exist_ok=True)
        existing = _segments(self.folder)
        self._next = int(existing[-1].name.split("-")[1].split(".")[0]) + 1 if existing else 0

    def commit(self, records: Iterable[ResultRecord]) -> int:
        """Write ``records`` as one new segment; returns how many were written."""
        lines = [r.json_line() for r in records]
        if not lines:
            return 0
        path = self.folder / f"answers-{self._next:06d}.jsonl"
        with atomic_write(path) as out:
            for line in lines:
                out.write(line if line.endswith(b"\n") else line + b"\n")
        self._next += 1
        return len(lines)


def record_refusal(run_dir: RunDirectory, attempt: int, facts: dict[str, Any]) -> None:
    write_json_atomic(sync_dir(run_dir, attempt) / "refused.json", facts)


def record_unanswered(run_dir: RunDirectory, attempt: int, unanswered: dict[str, str]) -> None:
    """Why each row the fallback sent got no answer (replaced by every run of the fallback)."""
    write_json_atomic(sync_dir(run_dir, attempt) / "unanswered.json", unanswered)


def fallback_notes(run_dir: RunDirectory, attempt: int) -> tuple[dict[str, str], str | None]:
    """(row id → why the fallback got no answer, why the fallback was refused) of ``attempt``."""
    path = sync_dir(run_dir, attempt) / "unanswered.json"
    try:
        unanswered = read_json(path) if path.exists() else {}
    except (OSError, ValueError):
        unanswered = {}
    refusal = load_refusal(run_dir, attempt)
    return unanswered, (refusal or {}).get("reason")


def clear_refusal(run_dir: RunDirectory, attempt: int) -> None:
    """Forget an earlier refusal (a later try found the budget allows the fallback)."""
    path = sync_dir(run_dir, attempt) / "refused.json"
    if path.exists():
        path.unlink()


def load_refusal(run_dir: RunDirectory, attempt: int) -> dict[str, Any] | None:
    path = sync_dir(run_dir, attempt) / "refused.json"
    try:
        return read_json(path) if path.exists() else None
    except (OSError, ValueError):
        return None


@dataclass
class SyncAnswers:
    """What every collected attempt's fallback answered: for rebuilding the run's files."""

    lines: dict[int, list[bytes]] = field(default_factory=dict)
    answered: set[str] = field(default_factory=set)
    usage: Usage = field(default_factory=Usage)
    cost: Cost = field(default_factory=Cost)
    batch_price_usd: float = 0.0
    refused: dict[int, dict[str, Any]] = field(default_factory=dict)
    failed: dict[str, bytes] = field(default_factory=dict)
    """Row id → its last ``invalid_output`` record, for rows the fallback may not send again."""
    invalid_output: int = 0
    """Answers that did not validate (each paid, each counted)."""
    invalid_attempts: set[int] = field(default_factory=set)

    @classmethod
    def load(
        cls, run_dir: RunDirectory, attempts: Iterable[int], provider: str, prices: PriceTable | None = None
    ) -> SyncAnswers:
        found = cls()
        tally = CostTally(prices or default_price_table(), provider)
        for attempt in attempts:
            refusal = load_refusal(run_dir, attempt)
            if refusal is not None:
                found.refused[attempt] = refusal
            for row, line in read_answers(run_dir, attempt):
                record = ResultRecord.model_validate_json(line)
                found.lines.setdefault(attempt, []).append(line)
                found.answered.add(row)
                tally.add(record.model, record.usage)
            for row, lines in read_invalid(run_dir, attempt).items():
                for line in lines:
                    record = ResultRecord.model_validate_json(line)
                    tally.add(record.model, record.usage)
                found.invalid_output += len(lines)
                found.invalid_attempts.add(attempt)
                if row not in found.answered and is_final(lines[-1]):
                    found.failed[row] = lines[-1]
        found.usage = tally.usage
        paid = tally.cost
        found.batch_price_usd = paid.batch_usd
        found.cost = paid.model_copy(update={"batch_usd": paid.standard_usd})
        return found

    def result_lines(self, attempt: int) -> list[bytes]:
        return self.lines.get(attempt, [])

    def manifest(self, succeeded: int, cached: int) -> dict[str, Any]:
        """The manifest's account of who finished the rows and what the fallback cost."""
        by_sync = len(self.answered)
        return {
            "finished_by": {"batch": succeeded - cached - by_sync, "sync": by_sync, "cache": cached},
            "sync_fallback": {
                "attempts": sorted(set(self.lines) | set(self.refused) | self.invalid_attempts),
                "answered": by_sync,
                "invalid_output": self.invalid_output,
                "usage": self.usage.model_dump(),
                "cost_usd": round(self.cost.standard_usd, 6),
                "at_batch_prices_usd": round(self.batch_price_usd, 6),
                "extra_cost_usd": round(self.cost.standard_usd - self.batch_price_usd, 6),
                "refused": {str(k): v for k, v in self.refused.items()},
            },
        }
