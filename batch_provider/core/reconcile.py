"""Reconciliation: exactly one record per expected custom_id of one batch.

Invariants:
- Every expected id is emitted exactly once: the first record the provider returned for it, or,
  when the provider never answered it, a synthesized record: ``expired`` (batch expired),
  ``cancelled`` (batch cancelled) or ``errored`` and retryable (batch failed, or completed without
  answering it), with a message saying why.
- Duplicates are dropped and unexpected ids are counted (and logged), never emitted.
- A succeeded answer to a request that asked for a JSON schema carries ``parsed``; text that does
  not parse turns the record ``errored`` (type ``invalid_json_output``), retryable unless the
  model stopped on its token limit (then resending unchanged would truncate again).
- Memory is bounded by one batch's id set.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any

from batch_provider.backends.base import BatchBackend
from batch_provider.core.jsonl import iter_lines, iter_path_lines
from batch_provider.core.models import (
    BatchEnding,
    BatchRef,
    BatchState,
    ItemStatus,
    ResultError,
    ResultRecord,
)
from batch_provider.core.split import part_ids_path

log = logging.getLogger(__name__)

_TRUNCATED = frozenset({"length", "max_tokens", "max_output_tokens"})
_SUCCEEDED = ItemStatus.SUCCEEDED  # a module global: enum member lookups cost a descriptor call


@dataclass
class ReconcileReport:
    """What reconciliation saw for one batch."""

    expected: int = 0
    answered: int = 0
    synthesized: int = 0
    duplicates: int = 0
    unexpected: int = 0
    unexpected_sample: list[str] = field(default_factory=list)
    json_failures: int = 0


def expected_ids(path: Any, backend: BatchBackend) -> dict[str, bool]:
    """custom_id → "wants JSON output" for every line of a part file, in file order: read from the
    part's ids sidecar when the splitter wrote one, else decoded from the part file itself."""
    try:
        sidecar = part_ids_path(path).open("rb")
    except FileNotFoundError:
        sidecar = None
    if sidecar is not None:
        with sidecar:
            return {line[1:].decode(): line[:1] == b"1" for line in iter_lines(sidecar)}
    wants_json = getattr(backend, "wants_json", None)
    ids: dict[str, bool] = {}
    for line in iter_path_lines(path):
        ids[backend.custom_id_of(line)] = bool(wants_json(line)) if wants_json else False
    return ids


def _missing_record(custom_id: str, ref: BatchRef, state: BatchState) -> ResultRecord:
    ending = state.ending
    if ending is BatchEnding.EXPIRED:
        status, kind = ItemStatus.EXPIRED, "batch_expired"
        message = "the batch expired before this request ran"
    elif ending is BatchEnding.CANCELLED:
        status, kind = ItemStatus.CANCELLED, "batch_cancelled"
        message = "the batch was cancelled before this request ran"
    elif ending is BatchEnding.FAILED:
        status, kind = ItemStatus.ERRORED, "batch_failed"
        message = f"the batch failed: {state.error_message or state.native_status}"
    else:
        status, kind = ItemStatus.ERRORED, "missing_result"
        message = f"the batch ended {state.native_status!r} without a result for this request"
    return ResultRecord(
        custom_id=custom_id,
        status=status,
        error=ResultError(type=kind, message=message, retryable=True),
        batch_id=ref.batch_id,
        provider=ref.provider.value,
        model=ref.model,
    )


def _with_parsed(record: ResultRecord) -> tuple[ResultRecord, bool]:
    """The record with ``parsed`` set from its text; (errored record, False) when it is not JSON."""
    if record.parsed is not None:
        return record, True
    try:
        parsed = json.loads(record.output_text or "")
    except ValueError as exc:
        return record.model_copy(
            update={
                "status": ItemStatus.ERRORED,
                "error": ResultError(
                    type="invalid_json_output",
                    message=f"the output is not valid JSON for the requested schema: {exc}",
                    retryable=record.finish_reason not in _TRUNCATED,
                ),
            }
        ), False
    return record.model_copy(update={"parsed": parsed}), True


async def reconcile(
    ref: BatchRef,
    expected: dict[str, bool] | Iterable[str],
    state: BatchState,
    results: AsyncIterator[ResultRecord],
    *,
    report: ReconcileReport | None = None,
) -> AsyncIterator[ResultRecord]:
    """Exactly one record per id of ``expected`` (ids, or id → wants-JSON from :func:`expected_ids`),
    answered ones first in the provider's order, then the unanswered ones in expected order."""
    report = report if report is not None else ReconcileReport()
    wants: dict[str, bool] = expected if isinstance(expected, dict) else dict.fromkeys(expected, False)
    report.expected = len(wants)
    answered: set[str] = set()
    async for record in results:
        custom_id = record.custom_id
        if custom_id not in wants:
            report.unexpected += 1
            if len(report.unexpected_sample) < 10:
                report.unexpected_sample.append(custom_id)
            continue
        if custom_id in answered:
            report.duplicates += 1
            continue
        answered.add(custom_id)
        if record.status is _SUCCEEDED and wants[custom_id]:
            record, ok = _with_parsed(record)
            if not ok:
                report.json_failures += 1
        report.answered += 1
        yield record
    for custom_id in wants:
        if custom_id not in answered:
            report.synthesized += 1
            yield _missing_record(custom_id, ref, state)
    if report.unexpected:
        log.warning(
            "batch %s returned %d result(s) for ids it was not given, e.g. %s",
            ref.batch_id,
            report.unexpected,
            ", ".join(report.unexpected_sample[:3]),
        )
