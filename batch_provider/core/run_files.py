"""Rebuild a run's final files from its collected attempts: errors, dead letter and manifest.

Files: ``errors.jsonl`` (errors not resubmitted by a later attempt), ``dead_letter.jsonl`` (when
the run is closed) and ``manifest.json``. The results file is written by collect itself (see
:mod:`batch_provider.core.result_files`); it is only counted here.

Invariants:
- An attempt is collected when its ``attempt-N/errors.jsonl`` exists (collect commits it after
  the results file), and only collected attempts are read.
- Rebuilding again gives the same files: it reads the attempts and writes each file whole
  (:func:`atomic_write`), so a kill at any point leaves each file old and complete or new and
  complete.
- ``accounted`` in the manifest is ``inputs == rejected + succeeded + unresolved``: every row is
  in exactly one file.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import msgspec
from pydantic import BaseModel, Field

from batch_provider.core.contract import BatchBackend
from batch_provider.core.deadline import load_deadline
from batch_provider.core.ledger import Ledger
from batch_provider.core.models import ResultRecord, Usage
from batch_provider.core.pricing import Cost
from batch_provider.core.rejects import reject_reasons
from batch_provider.core.result_files import count_results, existing_results, iter_records, open_results
from batch_provider.core.run_index import record_run
from batch_provider.core.rundir import RunDirectory, atomic_write, read_json, write_json_atomic
from batch_provider.core.submission import part_custom_ids
from batch_provider.core.sync_journal import SyncAnswers


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
    started_at: datetime | None = None
    """When processing started, where the provider says (else None, as are the two splits)."""
    ended_at: datetime | None = None
    queue_seconds: float | None = None
    """created → started: how long the batch waited in the provider's queue."""
    processing_seconds: float | None = None
    """started → ended."""
    completion_seconds: float | None = None
    """created → ended."""
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
    results_format: str = "jsonl"
    """Format of ``files["results"]``: ``jsonl`` or ``parquet``."""
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


def lines_of(path: Any) -> Iterator[bytes]:
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
    """Rebuild ``errors.jsonl`` (and ``dead_letter.jsonl`` when ``dead_letter``) and
    ``manifest.json`` from the collected attempts; the successes are counted in the final results
    file. ``dead_letter_reason`` gives each dead letter line a ``dead_letter_reason`` field (why
    the item was not sent again)."""
    collected = [n for n in sorted(ledger.attempts) if run_dir.attempt_errors(n).exists()]
    unresolved: Counter[str] = Counter()
    retryable = 0
    figures: list[BatchFigures] = []
    synced = SyncAnswers.load(run_dir, collected, ledger.provider.value)
    _add_sync_answers(run_dir, synced)
    succeeded = count_results(run_dir)
    with atomic_write(run_dir.errors) as errors_out:
        for position, attempt in enumerate(collected):
            later = collected[position + 1] if position + 1 < len(collected) else None
            resubmitted = _resubmitted_ids(backend, run_dir, ledger, later)
            for line in lines_of(run_dir.attempt_errors(attempt)):
                record = ResultRecord.model_validate_json(line)
                if record.custom_id in resubmitted or record.custom_id in synced.answered:
                    continue
                if record.custom_id in synced.failed:  # the sync fallback's answer, not valid either
                    line = synced.failed[record.custom_id]
                    record = ResultRecord.model_validate_json(line)
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
            for line in lines_of(run_dir.errors):
                record = ResultRecord.model_validate_json(line)
                dead_after_deadline += int(record.attempt in timed_out and record.retryable)
                if dead_letter_reason is not None:
                    line = _with_reason(line, dead_letter_reason(record))
                out.write(line)
                dead += 1
    first = ledger.attempts[1]
    found = existing_results(run_dir)
    total_unresolved = sum(unresolved.values())
    usage = sum((f.usage for f in figures), synced.usage)
    cost = sum((f.cost for f in figures), synced.cost)
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
            "results": str(found[0] if found else run_dir.results),
            "errors": str(run_dir.errors),
            "rejects": str(run_dir.rejects),
            "manifest": str(run_dir.manifest),
            **({"dead_letter": str(run_dir.dead_letter)} if dead_letter else {}),
        },
        results_format=found[1] if found else "jsonl",
        finished=dead_letter,
        tags=first.tags,
        estimate=first.estimate,
        estimate_error_pct=_estimate_error(first.estimate, cost),
        stray_results=sum(f.stray_results for f in figures),
        cache_entries_not_stored=sum(f.cache_not_stored for f in figures),
        deadline_passed=timed_out,
        dead_letter_after_deadline=dead_after_deadline,
        invalid_output=sum(f.invalid_output for f in figures) + synced.invalid_output,
    )
    manifest = _manifest(summary, ledger)
    manifest.update(synced.manifest(succeeded, first.cached))
    manifest["rejected_reasons"] = reject_reasons(run_dir.rejects) if first.rejected else {}
    write_json_atomic(run_dir.manifest, manifest)
    record_run(run_dir, manifest)
    return summary


def _add_sync_answers(run_dir: RunDirectory, synced: SyncAnswers) -> None:
    """Put each answer of a sync fallback into the final results file, once. A collect rewrites
    that file from the batches' answers, so every rebuild checks that the journal's answers are
    there (in the file's format) and writes the missing ones."""
    if not synced.answered:
        return
    found = existing_results(run_dir)
    fmt = found[1] if found else "jsonl"
    present: set[str] = set()
    keep_raw = False
    if found is not None:
        for record in iter_records(found[0], fmt):
            present.add(record.custom_id)
            keep_raw = keep_raw or record.raw is not None
    missing = [
        ResultRecord.model_validate_json(line)
        for lines in synced.lines.values()
        for line in lines
        if msgspec.json.decode(line)["custom_id"] not in present
    ]
    if not missing:
        return
    with open_results(run_dir, fmt, keep_raw=keep_raw) as out:
        out.keep_previous(run_dir, 0)  # attempts count from 1: every row is kept
        for record in missing:
            out.write(record)


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
