"""Sync fallback: send the rows an attempt's batches did not answer to the provider's
synchronous API, with the same request bodies, and keep every answer in the journal at once.

It runs after the attempt's wait passed ``sync_fallback_at`` (its batches cancelled and
collected: every row they answered is paid and kept). The rows left are the attempt's retryable
errors (cancelled, expired, rate-limited, server errors), never rows answered in a batch, never
invalid requests.

Invariants:
- Exactly once: a row with an answer in a batch is never sent; a row with a committed answer in
  the journal (:mod:`.sync_journal`) is never sent again, so running the fallback again (a retried
  task, a process killed mid-way) sends only what has no answer yet.
- Budget first: when ``max_cost_usd`` is set, the fallback starts only if what the run has paid
  so far plus the ceiling of the rows to send (input estimate + ``max_tokens``, at synchronous
  prices) fits; otherwise nothing is sent and the refusal is recorded (``refused.json``).
- Bounded: at most ``concurrency`` calls in flight; with ``tokens_per_minute`` set, the estimated
  tokens sent in any minute stay under it. A 429 is waited out (``Retry-After``, which also holds
  every other call of the same transport) and the row sent again; so is a 5xx answer (the
  provider did not answer it). A call whose connection broke after it was sent is not sent again
  by this fallback (it may have been paid): the row stays unanswered.
- Checked like a batch answer: an answer to a row that asked for JSON is validated against the
  run's output type (``output_type.json``). One that does not validate is ``invalid_output``
  (raw text and errors kept, journaled: it was paid), never a success; the row is sent again
  while its invalid answers, batch ones included, are within ``retry_invalid_output``, then its
  last invalid record stands as its outcome.
- The provider-specific part is a :class:`SyncCaller` (``backends/*/sync.py``): it turns one part-file
  line into the synchronous call and the answer into a :class:`ResultRecord`; keys stay in its
  transport, never in records or logs.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Protocol

from batch_provider.core.contract import BatchBackend
from batch_provider.core.errors import BatchProviderError, RateLimitedError
from batch_provider.core.estimate import estimate_input_tokens
from batch_provider.core.ledger import Ledger
from batch_provider.core.models import ItemStatus, ResultRecord, Usage
from batch_provider.core.output_type import OutputChecks
from batch_provider.core.part_files import iter_part_lines
from batch_provider.core.pricing import PriceTable, default_price_table
from batch_provider.core.reconcile import _with_parsed as check_answer
from batch_provider.core.rundir import RunDirectory, read_json
from batch_provider.core.submission import part_ids
from batch_provider.core.sync_journal import (
    SyncJournal,
    clear_refusal,
    is_final,
    read_answers,
    read_invalid,
    record_refusal,
    record_unanswered,
)

log = logging.getLogger(__name__)

DEFAULT_CONCURRENCY = 8
DEFAULT_MAX_TRIES = 8
"""Calls per row at most (429s and 5xx answers included) before it is left unanswered."""


@dataclass(frozen=True)
class SyncRow:
    row_id: str
    wire_id: str
    line: bytes
    """The row's line in the attempt's part file: the request body the batch was given."""
    model: str | None
    wants_json: bool = False
    """The request asked for a JSON schema: its answer is checked against the output type."""


class SyncCaller(Protocol):
    """One provider's synchronous call for a part-file line."""

    async def call(self, row: SyncRow) -> ResultRecord:
        """The answer as a record (``custom_id`` may be the wire id); raises
        :class:`BatchProviderError` when the provider gave none."""
        ...


@dataclass
class SyncReport:
    attempt: int
    to_send: int = 0
    answered: int = 0
    already_answered: int = 0
    unanswered: dict[str, str] = field(default_factory=dict)
    """Row id → why it has no answer (the last error)."""
    refused: str | None = None
    ceiling_usd: float | None = None
    invalid_output: int = 0
    """Answers that did not validate against the output type (paid, kept, not successes)."""


def _cut_off_ids(run_dir: RunDirectory, attempt: int) -> list[str]:
    path = run_dir.attempt_errors(attempt)
    if not path.exists():
        raise FileNotFoundError(
            f"attempt {attempt} of {run_dir} has not been collected yet; collect it first"
        )
    ids: list[str] = []
    for line in path.read_bytes().splitlines():
        if line.strip():
            record = json.loads(line)
            if (record.get("error") or {}).get("retryable"):
                ids.append(record["custom_id"])
    return ids


def rows_to_send(backend: BatchBackend, run_dir: RunDirectory, ledger: Ledger, attempt: int) -> list[SyncRow]:
    """The attempt's retryable rows without a committed sync answer, with their part-file lines."""
    done = {row for row, _ in read_answers(run_dir, attempt)}
    done |= {row for row, lines in read_invalid(run_dir, attempt).items() if is_final(lines[-1])}
    wanted = set(_cut_off_ids(run_dir, attempt)) - done
    rows: list[SyncRow] = []
    for chunk in ledger.attempts[attempt].chunks:
        ids = part_ids(backend, run_dir, chunk.part)
        for line in iter_part_lines(run_dir.root / chunk.part):
            wire = backend.custom_id_of(line)
            row = ids.rows.get(wire, wire)
            if row in wanted:
                wants_json = ids.wants.get(wire, False)
                rows.append(SyncRow(row, wire, line, chunk.model, wants_json))
    return rows


_MAX_TOKEN_KEYS = (
    "max_completion_tokens",
    "max_tokens",
    "max_output_tokens",
    "maxOutputTokens",
    "maxTokens",
    "max_gen_len",
)


def _max_tokens(line: bytes) -> int:
    body = json.loads(line)
    bedrock = body.get("modelInput")
    inners = (
        body.get("body"),
        body.get("params"),
        (body.get("request") or {}).get("generationConfig"),
        bedrock,
        bedrock.get("inferenceConfig") if isinstance(bedrock, dict) else None,
    )
    for inner in inners:
        if isinstance(inner, dict):
            for key in _MAX_TOKEN_KEYS:
                if isinstance(inner.get(key), int):
                    return inner[key]
    return 0


def row_tokens(row: SyncRow) -> tuple[int, int]:
    """(estimated input tokens, output ceiling) of a row's request."""
    return estimate_input_tokens(row.line.decode(errors="replace")), _max_tokens(row.line)


def ceiling_usd(rows: list[SyncRow], provider: str, prices: PriceTable) -> tuple[float, list[str]]:
    """The most the rows can cost at synchronous prices, and the models without a price."""
    total, unpriced = 0.0, set()
    for row in rows:
        inp, out = row_tokens(row)
        cost = prices.cost(provider, row.model, Usage(input_tokens=inp, output_tokens=out))
        if cost.unpriced_models:
            unpriced.add(row.model or "(none)")
        total += cost.standard_usd
    return total, sorted(unpriced)


def _spent_usd(run_dir: RunDirectory) -> float:
    """What the run has paid so far, from its latest manifest (batches and earlier sync answers)."""
    try:
        return float(read_json(run_dir.manifest)["cost"]["batch_usd"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0.0


class TokenWindow:
    """At most ``per_minute`` estimated tokens sent in any 60 s (``window`` for tests)."""

    def __init__(self, per_minute: int | None, window: float = 60.0) -> None:
        self.per_minute = per_minute
        self.window = window
        self._sent: deque[tuple[float, int]] = deque()
        self._lock = asyncio.Lock()

    async def take(self, tokens: int) -> None:
        if not self.per_minute:
            return
        tokens = min(tokens, self.per_minute)  # a row over the whole budget goes alone
        async with self._lock:
            while True:
                now = time.monotonic()
                while self._sent and self._sent[0][0] <= now - self.window:
                    self._sent.popleft()
                if sum(n for _, n in self._sent) + tokens <= self.per_minute:
                    self._sent.append((now, tokens))
                    return
                await asyncio.sleep(self._sent[0][0] + self.window - now + 0.01)


async def run_sync_fallback(
    backend: BatchBackend,
    caller: SyncCaller,
    run_dir: RunDirectory,
    attempt: int,
    *,
    concurrency: int = DEFAULT_CONCURRENCY,
    tokens_per_minute: int | None = None,
    max_cost_usd: float | None = None,
    prices: PriceTable | None = None,
    max_tries: int = DEFAULT_MAX_TRIES,
    token_window_seconds: float = 60.0,
) -> SyncReport:
    """Send ``attempt``'s unanswered rows to the synchronous API and journal each answer.

    Call it again after a crash: it sends only rows without a committed answer. The run's files
    are rebuilt by the caller afterwards (:func:`~batch_provider.core.collection.rebuild_outputs`
    reads the journal)."""
    ledger = Ledger.load(run_dir)
    if ledger is None:
        raise FileNotFoundError(f"{run_dir} has no ledger.json: it was not written by a submit task")
    provider = ledger.provider.value
    prices = prices or default_price_table()
    rows = rows_to_send(backend, run_dir, ledger, attempt)
    report = SyncReport(attempt=attempt, to_send=len(rows))
    report.already_answered = sum(1 for _ in read_answers(run_dir, attempt))
    if not rows:
        return report
    ceiling, unpriced = ceiling_usd(rows, provider, prices)
    report.ceiling_usd = round(ceiling, 6)
    if max_cost_usd is not None:
        spent = _spent_usd(run_dir)
        if unpriced:
            report.refused = (
                f"max_cost_usd=${max_cost_usd:.4f} is set but there is no price for {', '.join(unpriced)}: "
                "the fallback's cost is unknown"
            )
        elif spent + ceiling > max_cost_usd:
            report.refused = (
                f"the fallback's ceiling ${ceiling:.4f} for {len(rows)} row(s) at synchronous prices, on top "
                f"of ${spent:.4f} already paid, is over max_cost_usd=${max_cost_usd:.4f}"
            )
        if report.refused:
            log.warning("Sync fallback for attempt %d not started: %s", attempt, report.refused)
            record_refusal(
                run_dir,
                attempt,
                {
                    "reason": report.refused,
                    "rows": len(rows),
                    "ceiling_usd": report.ceiling_usd,
                    "spent_usd": round(spent, 6),
                    "max_cost_usd": max_cost_usd,
                },
            )
            return report
    clear_refusal(run_dir, attempt)
    log.info(
        "Sync fallback for attempt %d: %d row(s) to send (%d answered before), at most %d at a time, "
        "ceiling $%.4f",
        attempt,
        len(rows),
        report.already_answered,
        concurrency,
        ceiling,
    )
    journal = SyncJournal(run_dir, attempt)
    pending: list[ResultRecord] = []
    writer_lock = asyncio.Lock()

    async def keep(record: ResultRecord) -> None:
        """Commit ``record`` with whatever else arrived meanwhile, one segment a write."""
        pending.append(record)
        async with writer_lock:
            if not any(r is record for r in pending):  # a write that started after it took it along
                return
            batch = list(pending)
            pending.clear()
            await asyncio.to_thread(journal.commit, batch)

    checks = OutputChecks.load(run_dir, attempt + 1)  # invalid answers of the batches, this one's too
    for row, lines in read_invalid(run_dir, attempt).items():
        checks.earlier[row] += len(lines)
    gate = asyncio.Semaphore(max(1, concurrency))
    tokens = TokenWindow(tokens_per_minute, token_window_seconds)

    async def send(row: SyncRow) -> None:
        async with gate:
            inp, out = row_tokens(row)
            last = "not sent"
            for _ in range(max_tries):
                await tokens.take(inp + out)
                try:
                    record = await caller.call(row)
                except RateLimitedError as exc:
                    last = f"{type(exc).__name__}: {exc}"
                    await asyncio.sleep(min(max(exc.retry_after or 1.0, 0.05), 60.0))
                    continue
                except BatchProviderError as exc:
                    last = f"{type(exc).__name__}: {exc}"
                    if exc.status_code is not None and exc.status_code >= 500:
                        await asyncio.sleep(1.0)
                        continue
                    break  # refused (4xx) or maybe paid but lost on the wire: not sent again
                if record.status is not ItemStatus.SUCCEEDED:
                    last = record.error.message if record.error else record.status.value
                    break
                record.custom_id, record.attempt = row.row_id, attempt
                record.batch_id = "sync"
                if row.wants_json:
                    record, valid = check_answer(record, checks.validator)
                    if not valid:
                        checks.limit_retries(record)
                        checks.earlier[row.row_id] += 1
                        report.invalid_output += 1
                        await keep(record)
                        if record.retryable:
                            last = record.error.message if record.error else "invalid_output"
                            continue
                        return
                report.answered += 1
                await keep(record)
                return
            report.unanswered[row.row_id] = last

    await asyncio.gather(*(send(row) for row in rows))
    await asyncio.to_thread(record_unanswered, run_dir, attempt, report.unanswered)
    if report.unanswered:
        log.warning(
            "Sync fallback for attempt %d: %d row(s) without an answer, e.g. %s",
            attempt,
            len(report.unanswered),
            next(iter(report.unanswered.values())),
        )
    if report.invalid_output:
        log.warning(
            "Sync fallback for attempt %d: %d answer(s) did not match the output type (status "
            "invalid_output, kept with their errors)",
            attempt,
            report.invalid_output,
        )
    log.info("Sync fallback for attempt %d: %d answer(s) kept", attempt, report.answered)
    return report


def report_dict(report: SyncReport) -> dict[str, Any]:
    return {
        "attempt": report.attempt,
        "to_send": report.to_send,
        "answered": report.answered,
        "already_answered": report.already_answered,
        "unanswered": len(report.unanswered),
        "invalid_output": report.invalid_output,
        "refused": report.refused,
        "ceiling_usd": report.ceiling_usd,
    }
