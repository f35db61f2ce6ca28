"""Collect ended batches into the run's result files and manifest.

Files, per attempt N: ``attempt-N/results.jsonl`` (succeeded), ``attempt-N/errors.jsonl`` (every
other outcome) and ``attempt-N/batches.json`` (per-batch figures). Top level, rebuilt from the
attempts after every collect: ``results.jsonl`` (all successes), ``errors.jsonl`` (errors not
resubmitted by a later attempt), ``manifest.json``.

Invariants:
- Each submitted custom_id appears once per attempt it was part of, in exactly one of that
  attempt's two files (reconciliation guarantees it, even for expired or cancelled batches).
- Collecting again overwrites the same files with the same content: collect is idempotent
  (the output-token history is recorded by the first collect that writes ``batches.json``).
- Every file is written with :func:`atomic_write`: a collect killed at any point leaves each
  file old and complete or new and complete. An attempt's ``errors.jsonl`` is committed after
  its ``results.jsonl``, so an attempt whose errors file exists has both complete.
- The result cache is optional: a write that keeps failing is counted
  (``cache_entries_not_stored``) and logged, never raised.
- Records are streamed from the provider to the files; memory holds one batch's id set at most.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import msgspec
from pydantic import BaseModel, Field

from batch_provider.core.cache import CACHE_BLOCK, ResultCache
from batch_provider.core.contract import BatchBackend
from batch_provider.core.deadline import load_deadline
from batch_provider.core.estimate import Calibration
from batch_provider.core.handle import RunHandle
from batch_provider.core.ledger import Ledger
from batch_provider.core.models import BatchRef, ItemStatus, ResultRecord, Usage
from batch_provider.core.output_type import OutputChecks
from batch_provider.core.pricing import Cost, CostTally, PriceTable, default_price_table
from batch_provider.core.reconcile import ReconcileReport, reconcile
from batch_provider.core.rejects import reject_reasons
from batch_provider.core.run_index import record_run
from batch_provider.core.rundir import (
    RunDirectory,
    atomic_write,
    read_json,
    remove_stale_temps,
    write_json_atomic,
)
from batch_provider.core.submission import part_custom_ids, part_ids

log = logging.getLogger(__name__)
_SUCCEEDED = ItemStatus.SUCCEEDED
_INVALID = ItemStatus.INVALID_OUTPUT


class ModelFigures(BaseModel):
    usage: Usage = Field(default_factory=Usage)
    cost: Cost = Field(default_factory=Cost)


class BatchFigures(BaseModel):
    batch_id: str
    attempt: int
    chunk_index: int
    model: str | None = None
    request_count: int
    native_status: str
    ending: str | None = None
    error_message: str | None = None
    counts: dict[str, int] = Field(default_factory=dict)
    usage: Usage = Field(default_factory=Usage)
    cost: Cost = Field(default_factory=Cost)
    created_at: datetime | None = None
    ended_at: datetime | None = None
    stray_results: int = 0
    """Result lines for ids this batch was not given (ignored)."""
    duplicate_results: int = 0
    """Extra result lines for an id already answered (a success is kept over an error)."""
    cache_not_stored: int = 0
    """Successes of this batch that could not be stored in the result cache."""
    invalid_output: int = 0
    """Answers that were not JSON or did not validate against the output type."""
    by_model: dict[str, ModelFigures] = Field(default_factory=dict)
    """Usage and cost per model (a batch may mix models where the provider allows it)."""


class RunSummary(BaseModel):
    run_path: str
    provider: str
    attempts: int
    inputs: int
    rejected: int
    succeeded: int
    """Successes, including those served from the result cache."""
    cached: int = 0
    cache_savings_usd: float = 0.0
    unresolved: int
    """Items without a success: errored, expired or cancelled, after the latest attempt."""
    unresolved_by_status: dict[str, int] = Field(default_factory=dict)
    retryable: int = 0
    dead_letter: int = 0
    usage: Usage = Field(default_factory=Usage)
    cost: Cost = Field(default_factory=Cost)
    batches: list[BatchFigures] = Field(default_factory=list)
    accounted: bool
    """``inputs == rejected + succeeded + unresolved``: every row is in exactly one file."""
    files: dict[str, str] = Field(default_factory=dict)
    finished: bool = False
    tags: dict[str, str] = Field(default_factory=dict)
    estimate: dict[str, Any] | None = None
    estimate_error_pct: float | None = None
    """(expected estimate − actual) / actual × 100, on the batch cost of what was sent."""
    stray_results: int = 0
    """Result lines, over every collected batch, for ids never sent in that batch: ignored."""
    cache_entries_not_stored: int = 0
    """Successes the result cache could not store (the results files have them all)."""
    deadline_passed: list[int] = Field(default_factory=list)
    """Attempts whose wait passed its deadline (their batches were ended early)."""
    dead_letter_after_deadline: int = 0
    """Items of the dead letter cut off by a passed deadline rather than failed."""
    invalid_output: int = 0
    """Answers, over every collected batch, that did not validate (each attempt counted)."""

    def for_xcom(self) -> dict[str, Any]:
        """A short summary for downstream tasks: counts, tokens and file paths, never records."""
        data = self.model_dump(mode="json", exclude={"batches", "cost", "estimate"})
        data["cost"] = self.cost.summary()
        data["batch_ids"] = [b.batch_id for b in self.batches]
        return data


async def collect_run(
    backend: BatchBackend,
    handle: RunHandle,
    run_dir: RunDirectory,
    *,
    prices: PriceTable | None = None,
    cache: ResultCache | None = None,
) -> RunSummary:
    """Stream every batch of ``handle``'s attempt into the attempt's files, then rebuild the
    run's top-level files and manifest. Every batch must have ended. Successes are stored in
    ``cache`` when given, and the DAG's output-token history is updated for later estimates."""
    prices = prices or default_price_table()
    ledger = Ledger.load(run_dir)
    if ledger is None:
        raise FileNotFoundError(f"{run_dir} has no ledger.json: it was not written by a submit task")
    if handle.attempt not in ledger.attempts:
        raise ValueError(
            f"the handle names attempt {handle.attempt}, which the ledger of {run_dir} does not hold: "
            "was the handle made for another run folder?"
        )
    parts = {c.batch.batch_id: c.part for c in ledger.attempts[handle.attempt].chunks if c.batch}
    unknown = [ref.batch_id for ref in handle.batches if ref.batch_id not in parts]
    if unknown:
        raise ValueError(
            f"batch(es) {', '.join(unknown)} of the handle are not recorded for attempt "
            f"{handle.attempt} in {run_dir}: the handle belongs to another run folder or a submit "
            "that lost its claims. Collect the handle the submit task returned for this folder."
        )
    figures: list[BatchFigures] = []
    checks = OutputChecks.load(run_dir, handle.attempt)
    attempt_dir = run_dir.attempt_dir(handle.attempt)
    attempt_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(run_dir.root)
    remove_stale_temps(attempt_dir)
    batches_file = attempt_dir / "batches.json"
    recorded_before = batches_file.exists()
    # exits in reverse order: results are committed first, the errors file (the marker) last
    with (
        atomic_write(run_dir.attempt_errors(handle.attempt)) as errors,
        atomic_write(run_dir.attempt_results(handle.attempt)) as results,
    ):
        for ref in handle.batches:
            figures.append(
                await _collect_batch(
                    backend, ref, handle.attempt, run_dir, parts, results, errors, prices, cache, checks
                )
            )
    # written last: it tells a later collect of this attempt that the history has its figures
    write_json_atomic(batches_file, [f.model_dump(mode="json") for f in figures])
    if not recorded_before:
        _record_history(run_dir, ledger.provider.value, figures)
    not_stored = sum(f.cache_not_stored for f in figures)
    if not_stored:
        log.warning("%d successes of attempt %d are not in the result cache", not_stored, handle.attempt)
    summary = rebuild_outputs(backend, run_dir, ledger)
    log.info(
        "Collected attempt %d: %d succeeded, %d unresolved, %d rejected of %d inputs",
        handle.attempt,
        summary.succeeded,
        summary.unresolved,
        summary.rejected,
        summary.inputs,
    )
    invalid = sum(f.invalid_output for f in figures)
    if invalid:
        log.warning(
            "Attempt %d: %d answer(s) did not match the output type (status invalid_output, in %s)",
            handle.attempt,
            invalid,
            run_dir.attempt_errors(handle.attempt),
        )
    return summary


async def _collect_batch(
    backend: BatchBackend,
    ref: BatchRef,
    attempt: int,
    run_dir: RunDirectory,
    parts: dict[str, str],
    results: Any,
    errors: Any,
    prices: PriceTable,
    cache: ResultCache | None,
    checks: OutputChecks | None = None,
) -> BatchFigures:
    state = await backend.status(ref.batch_id)
    if not state.is_terminal:
        raise RuntimeError(
            f"batch {ref.batch_id} is still {state.status.value} ({state.native_status}); "
            "wait for it to end before collecting"
        )
    ids = part_ids(backend, run_dir, parts[ref.batch_id])
    counts: Counter[str] = Counter()
    tally = CostTally(prices.dated(ref.created_at), ref.provider.value)  # prices of the batch's day
    keys = _cache_keys(run_dir, set(ids.rows.values())) if cache is not None else {}
    to_cache: list[tuple[str, ResultRecord]] = []
    report = ReconcileReport()
    not_stored = 0
    checks = checks or OutputChecks()
    records = reconcile(
        ref,
        ids.wants,
        state,
        backend.results(ref),
        report=report,
        row_ids=ids.rows,
        validator=checks.validator,
    )
    async for record in records:
        record.attempt = attempt
        if record.status is _INVALID:
            checks.limit_retries(record)
        succeeded = record.status is _SUCCEEDED
        if succeeded and cache is not None and record.custom_id in keys:
            to_cache.append((keys[record.custom_id], record))
            if len(to_cache) >= CACHE_BLOCK:
                not_stored += await asyncio.to_thread(cache.store_safely, to_cache)
                to_cache = []
        counts[record.status] += 1
        if record.usage.total_tokens:
            tally.add(record.model or ref.model, record.usage)
        (results if succeeded else errors).write(record.json_line())
    if to_cache and cache is not None:
        not_stored += await asyncio.to_thread(cache.store_safely, to_cache)
    return BatchFigures(
        batch_id=ref.batch_id,
        attempt=attempt,
        chunk_index=ref.chunk_index,
        model=ref.model,
        request_count=ref.request_count,
        native_status=state.native_status,
        ending=state.ending.value if state.ending else None,
        error_message=state.error_message,
        counts={status.value: n for status, n in counts.items()},
        usage=tally.usage,
        cost=tally.cost,
        created_at=state.created_at or ref.created_at,
        ended_at=state.ended_at,
        stray_results=report.unexpected,
        duplicate_results=report.duplicates,
        cache_not_stored=not_stored,
        invalid_output=report.invalid_outputs,
        by_model={m: ModelFigures(usage=u, cost=c) for m, (u, c) in tally.by_model().items()},
    )


class _CacheKeyLine(msgspec.Struct):
    custom_id: str
    key: str


_read_cache_key = msgspec.json.Decoder(_CacheKeyLine).decode


def _cache_keys(run_dir: RunDirectory, wanted: Any) -> dict[str, str]:
    """Result-cache keys of the ``wanted`` custom_ids (one batch's worth).

    The file is read once per batch: keeping every key of attempt 1 for the whole collect would
    hold the run's id set in memory, not one batch's."""
    keys: dict[str, str] = {}
    for line in _lines(run_dir.cache_keys):
        entry = _read_cache_key(line)
        if entry.custom_id in wanted:
            keys[entry.custom_id] = entry.key
    return keys


def _record_history(run_dir: RunDirectory, provider: str, figures: list[BatchFigures]) -> None:
    calibration = Calibration.load(run_dir.calibration)
    for figure in figures:
        succeeded = figure.counts.get(ItemStatus.SUCCEEDED.value, 0)
        if figure.model and succeeded:
            calibration.record(provider, figure.model, succeeded, figure.usage.output_tokens)
    try:
        calibration.save(run_dir.calibration)
    except OSError as exc:  # history only sharpens estimates; never fail a collect over it
        log.warning("Could not update the output-token history at %s: %s", run_dir.calibration, exc)


def _lines(path: Any) -> Iterator[bytes]:
    """Non-blank lines of ``path`` as they are, each ending in a newline; none if it is missing."""
    if not path.exists():
        return
    with path.open("rb") as fh:
        for line in fh:
            if line.strip():
                yield line if line.endswith(b"\n") else line + b"\n"


def rebuild_outputs(
    backend: BatchBackend,
    run_dir: RunDirectory,
    ledger: Ledger,
    *,
    dead_letter: bool = False,
    dead_letter_reason: Callable[[ResultRecord], str] | None = None,
) -> RunSummary:
    """Rebuild ``results.jsonl``, ``errors.jsonl`` (and ``dead_letter.jsonl`` when ``dead_letter``)
    and ``manifest.json`` from the collected attempts. ``dead_letter_reason`` gives each dead
    letter line a ``dead_letter_reason`` field (why the item was not sent again)."""
    collected = [n for n in sorted(ledger.attempts) if run_dir.attempt_errors(n).exists()]
    succeeded = 0
    unresolved: Counter[str] = Counter()
    retryable = 0
    figures: list[BatchFigures] = []
    with atomic_write(run_dir.results) as results_out, atomic_write(run_dir.errors) as errors_out:
        for line in _lines(run_dir.cached):
            results_out.write(line)
            succeeded += 1
        for position, attempt in enumerate(collected):
            for line in _lines(run_dir.attempt_results(attempt)):
                results_out.write(line)
                succeeded += 1
            later = collected[position + 1] if position + 1 < len(collected) else None
            resubmitted = _resubmitted_ids(backend, run_dir, ledger, later)
            for line in _lines(run_dir.attempt_errors(attempt)):
                record = ResultRecord.model_validate_json(line)
                if record.custom_id in resubmitted:
                    continue
                errors_out.write(line)
                unresolved[record.status.value] += 1
                retryable += int(record.retryable)
            batches_file = run_dir.attempt_dir(attempt) / "batches.json"
            if batches_file.exists():
                figures.extend(BatchFigures.model_validate(b) for b in read_json(batches_file))
    dead = dead_after_deadline = 0
    timed_out = [n for n in collected if load_deadline(run_dir, n) is not None]
    if dead_letter:
        with atomic_write(run_dir.dead_letter) as out:
            for line in _lines(run_dir.errors):
                record = ResultRecord.model_validate_json(line)
                dead_after_deadline += int(record.attempt in timed_out and record.retryable)
                if dead_letter_reason is not None:
                    line = _with_reason(line, dead_letter_reason(record))
                out.write(line)
                dead += 1
    first = ledger.attempts[1]
    total_unresolved = sum(unresolved.values())
    usage = sum((f.usage for f in figures), Usage())
    cost = sum((f.cost for f in figures), Cost())
    summary = RunSummary(
        run_path=str(run_dir.root),
        provider=ledger.provider.value,
        attempts=max(collected) if collected else 0,
        inputs=first.inputs,
        rejected=first.rejected,
        succeeded=succeeded,
        cached=first.cached,
        cache_savings_usd=round(first.cache_savings_usd, 6),
        unresolved=total_unresolved,
        unresolved_by_status=dict(unresolved),
        retryable=retryable,
        dead_letter=dead,
        usage=usage,
        cost=cost,
        batches=figures,
        accounted=first.inputs == first.rejected + succeeded + total_unresolved,
        files={
            "results": str(run_dir.results),
            "errors": str(run_dir.errors),
            "rejects": str(run_dir.rejects),
            "manifest": str(run_dir.manifest),
            **({"dead_letter": str(run_dir.dead_letter)} if dead_letter else {}),
        },
        finished=dead_letter,
        tags=first.tags,
        estimate=first.estimate,
        estimate_error_pct=_estimate_error(first.estimate, cost),
        stray_results=sum(f.stray_results for f in figures),
        cache_entries_not_stored=sum(f.cache_not_stored for f in figures),
        deadline_passed=timed_out,
        dead_letter_after_deadline=dead_after_deadline,
        invalid_output=sum(f.invalid_output for f in figures),
    )
    manifest = _manifest(summary, ledger)
    manifest["rejected_reasons"] = reject_reasons(run_dir.rejects) if first.rejected else {}
    write_json_atomic(run_dir.manifest, manifest)
    record_run(run_dir, manifest)
    return summary


def _with_reason(line: bytes, reason: str) -> bytes:
    """The JSON line with ``dead_letter_reason`` added as its last field."""
    body = line.rstrip(b"\r\n")
    return body[:-1] + b',"dead_letter_reason":' + msgspec.json.encode(reason) + b"}\n"


def _resubmitted_ids(
    backend: BatchBackend, run_dir: RunDirectory, ledger: Ledger, attempt: int | None
) -> set[str]:
    """custom_ids sent again in ``attempt``."""
    if attempt is None:
        return set()
    return {i for c in ledger.attempts[attempt].chunks for i in part_custom_ids(backend, run_dir, c.part)}


def _estimate_error(estimate: dict[str, Any] | None, actual: Cost) -> float | None:
    if not estimate or actual.batch_usd <= 0:
        return None
    expected = estimate["expected"]["batch_usd"]
    return round((expected - actual.batch_usd) / actual.batch_usd * 100, 1)


def _models_of(batches: list[BatchFigures]) -> set[str]:
    return {m for b in batches for m in b.by_model if m != "(none)"}


def _costs_by_model(batches: list[BatchFigures]) -> dict[str, dict[str, Any]]:
    """Usage and cost per model over every collected batch."""
    totals: dict[str, ModelFigures] = {}
    for batch in batches:
        for model, figures in batch.by_model.items():
            seen = totals.setdefault(model, ModelFigures())
            seen.usage = seen.usage + figures.usage
            seen.cost = seen.cost + figures.cost
    return {m: {"usage": f.usage.model_dump(), "cost": f.cost.summary()} for m, f in sorted(totals.items())}


def _manifest(summary: RunSummary, ledger: Ledger) -> dict[str, Any]:
    data = summary.model_dump(mode="json")
    data["cost"] = summary.cost.summary()
    data["run_key"] = ledger.run_key.model_dump()
    data["models"] = sorted({b.model for b in summary.batches if b.model} | _models_of(summary.batches))
    data["costs_by_model"] = _costs_by_model(summary.batches)
    data["written_at"] = datetime.now(UTC).isoformat()
    data["invariant"] = "inputs == rejected + succeeded + unresolved (succeeded includes cached)"
    return data
