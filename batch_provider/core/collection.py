"""Collect ended batches into the run's final results file, the attempt's errors and the manifest.

Files, per attempt N: ``attempt-N/errors.jsonl`` (every outcome but success) and
``attempt-N/batches.json`` (per-batch figures). Top level: the final results file
(``results.jsonl``, or ``results.parquet`` with ``results_format="parquet"``) holding every
success once, rewritten by each collect from the previous one plus attempt N's answers (see
:mod:`batch_provider.core.result_files`); then ``errors.jsonl`` and ``manifest.json`` are rebuilt
(:mod:`batch_provider.core.run_files`).

Invariants:
- Each submitted custom_id appears once per attempt it was part of, either in the results file
  (tagged with its attempt) or in that attempt's errors file (reconciliation guarantees it, even
  for expired or cancelled batches).
- Collecting again overwrites the same files with the same content: collect is idempotent
  (the output-token and completion-time histories are recorded by the first collect that writes
  ``batches.json``).
- Every file is written with :func:`atomic_write`: a collect killed at any point leaves each
  file old and complete or new and complete. The results file is committed before the attempt's
  ``errors.jsonl``, so an attempt whose errors file exists has its answers in the results file.
- The raw provider body is dropped unless ``keep_raw``: an answer is stored once, in its fields.
- The result cache is optional: a write that keeps failing is counted
  (``cache_entries_not_stored``) and logged, never raised.
- Records are streamed from the provider to the files; memory holds one batch's id set (and one
  Parquet row group) at most.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from typing import Any

import msgspec

from batch_provider.core.cache import ResultCache
from batch_provider.core.contract import BatchBackend
from batch_provider.core.estimate import Calibration
from batch_provider.core.handle import RunHandle
from batch_provider.core.heap import heap_frozen
from batch_provider.core.history import Timeline, record_completed
from batch_provider.core.ledger import Ledger
from batch_provider.core.models import BatchRef, ItemStatus, assign
from batch_provider.core.output_type import OutputChecks
from batch_provider.core.pricing import CostTally, PriceTable, default_price_table
from batch_provider.core.reconcile import ReconcileReport, reconcile
from batch_provider.core.result_files import check_results_format, open_results, remove_other_formats
from batch_provider.core.run_files import (
    BatchFigures,
    ModelFigures,
    RunSummary,
    lines_of,
    rebuild_outputs,
)
from batch_provider.core.rundir import (
    RunDirectory,
    atomic_write,
    remove_stale_temps,
    write_json_atomic,
)
from batch_provider.core.submission import part_ids

__all__ = ["BatchFigures", "ModelFigures", "RunSummary", "collect_run", "rebuild_outputs"]

log = logging.getLogger(__name__)
_SUCCEEDED = ItemStatus.SUCCEEDED
_INVALID = ItemStatus.INVALID_OUTPUT


async def collect_run(
    backend: BatchBackend,
    handle: RunHandle,
    run_dir: RunDirectory,
    *,
    prices: PriceTable | None = None,
    cache: ResultCache | None = None,
    keep_raw: bool = False,
    results_format: str = "jsonl",
) -> RunSummary:
    """Stream every batch of ``handle``'s attempt into the final results file and the attempt's
    errors file, then rebuild the run's errors and manifest. Every batch must have ended.
    Successes are stored in ``cache`` when given, and the DAG's output-token history is updated
    for later estimates. ``keep_raw`` keeps each answer's raw provider body; ``results_format``
    is ``"jsonl"`` or ``"parquet"`` (needs pyarrow)."""
    check_results_format(results_format)
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
        heap_frozen(),
        atomic_write(run_dir.attempt_errors(handle.attempt)) as errors,
        open_results(run_dir, results_format, keep_raw=keep_raw) as results,
    ):
        results.keep_previous(run_dir, handle.attempt)
        for ref in handle.batches:
            figures.append(
                await _collect_batch(
                    backend,
                    ref,
                    handle.attempt,
                    run_dir,
                    parts,
                    results,
                    errors,
                    prices,
                    cache,
                    checks,
                    keep_raw,
                )
            )
    _drop_copies(run_dir, results_format)
    # written last: it tells a later collect of this attempt that the history has its figures
    write_json_atomic(batches_file, [f.model_dump(mode="json") for f in figures])
    if not recorded_before:
        _record_history(run_dir, ledger.provider.value, figures)
        record_completed(run_dir.root, ledger.provider.value, figures)
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
    keep_raw: bool = False,
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
    segment = cache.segment() if cache is not None else None  # one cache segment per batch
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
        if record.attempt != attempt:
            assign(record, "attempt", attempt)
        if not keep_raw and record.raw is not None:
            assign(record, "raw", None)
        if record.status is _INVALID:
            checks.limit_retries(record)
        succeeded = record.status is _SUCCEEDED
        line = None
        if succeeded and segment is not None and record.custom_id in keys:
            line = record.json_line()  # the cache entry's record and the results line are one
            segment.add(keys[record.custom_id], record, record_line=line)
        counts[record.status] += 1
        if record.usage.total_tokens:
            tally.add(record.model or ref.model, record.usage)
        if succeeded:
            results.write(record, line)
        else:
            errors.write(record.json_line())
    if segment is not None and cache is not None:
        not_stored += await asyncio.to_thread(cache.commit_safely, segment)
    timeline = Timeline(state.created_at or ref.created_at, state.started_at, state.ended_at)
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
        created_at=timeline.created_at,
        started_at=timeline.started_at,
        ended_at=timeline.ended_at,
        queue_seconds=timeline.queue_seconds,
        processing_seconds=timeline.processing_seconds,
        completion_seconds=timeline.completion_seconds,
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
    for line in lines_of(run_dir.cache_keys):
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


def _drop_copies(run_dir: RunDirectory, results_format: str) -> None:
    """Delete what the committed results file now holds: the cache hits of ``cached.jsonl`` and
    a results file of the other format. Called after the results file is committed: a kill
    before leaves both, and the next collect reads the results file."""
    try:
        remove_other_formats(run_dir, results_format)
        if run_dir.cached.exists():
            run_dir.cached.unlink()
    except OSError as exc:  # a copy left behind wastes space, it never changes a count
        log.warning("Could not remove a copy of the results in %s: %s", run_dir, exc)
