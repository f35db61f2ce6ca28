"""Reconciliation: exactly one record per expected custom_id of one batch.

Invariants:
- Every expected id is emitted exactly once: a success the provider returned for it (the first
  one), else the first error it returned, or, when the provider never answered it, a synthesized
  record: ``expired`` (batch expired), ``cancelled`` (batch cancelled) or ``errored`` and
  retryable (batch failed, or completed without answering it), with a message saying why.
- Expected ids are wire ids; each emitted record carries the row's own id (``row_ids``).
- Duplicates are dropped (a success beats an error, whatever their order) and unexpected ids
  (strays: answers to requests this batch was not given) are counted and logged, never emitted.
- A succeeded answer to a request that asked for a JSON schema carries ``parsed``; text that does
  not parse, or (with a ``validator``) a value that does not validate against the output type,
  turns the record ``invalid_output`` (error type ``invalid_json_output`` or
  ``output_validation``, with the raw text and every validation error), retryable unless the
  model stopped on its token limit (then resending unchanged would truncate again). How many
  times it is resent is the collect's decision (``retry_invalid_output``).
- Memory is bounded by one batch's id set plus its error records (held until the stream ends,
  in case a success for the same id follows).
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from batch_provider.core.contract import BatchBackend
from batch_provider.core.models import (
    BatchEnding,
    BatchRef,
    BatchState,
    ItemStatus,
    ResultError,
    ResultRecord,
    assign,
)
from batch_provider.core.output_type import OutputValidator, summarise_errors
from batch_provider.core.part_files import iter_part_lines, part_ids_path
from batch_provider.core.wire_ids import PartIds, read_sidecar_file

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
    invalid_outputs: int = 0


def read_part_ids(path: Any, backend: BatchBackend) -> PartIds:
    """Wire id → wants JSON and wire id → row id for every line of a part file, in file order:
    from its ids sidecar, else decoded from the part file (the wire id is then the row id)."""
    ids = read_sidecar_file(part_ids_path(path))
    if ids is not None:
        return ids
    ids = PartIds()
    wants_json = getattr(backend, "wants_json", None)
    for line in iter_part_lines(path):
        key = backend.custom_id_of(line)
        ids.wants[key] = bool(wants_json(line)) if wants_json else False
        ids.rows[key] = key
    return ids


def expected_ids(path: Any, backend: BatchBackend) -> dict[str, bool]:
    """custom_id → "wants JSON output" for every line of a part file, in file order: read from the
    part's ids sidecar when the splitter wrote one, else decoded from the part file itself."""
    return read_part_ids(path, backend).wants


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


def _invalid(record: ResultRecord, kind: str, message: str, details: list[str]) -> ResultRecord:
    return record.model_copy(
        update={
            "status": ItemStatus.INVALID_OUTPUT,
            "parsed": None,
            "error": ResultError(
                type=kind,
                message=message,
                retryable=record.finish_reason not in _TRUNCATED,
                details=details,
            ),
        }
    )


def _with_parsed(record: ResultRecord, validator: OutputValidator | None = None) -> tuple[ResultRecord, bool]:
    """The record with ``parsed`` set from its text (checked by ``validator`` when given);
    (``invalid_output`` record, False) when it is not JSON or does not validate."""
    parsed = record.parsed
    if parsed is None:
        try:
            parsed = json.loads(record.output_text or "")
        except ValueError as exc:
            why = f"the output is not valid JSON for the requested schema: {exc}"
            return _invalid(record, "invalid_json_output", why, [why]), False
    if validator is not None:
        value, errors = validator.check(parsed)
        if errors:
            if record.output_text is None:  # a tool answer: keep what the model wrote
                record = record.model_copy(update={"output_text": json.dumps(parsed, ensure_ascii=False)})
            message = f"the output does not match {validator.spec.name}: {summarise_errors(errors)}"
            return _invalid(record, "output_validation", message, errors), False
        parsed = value
    return record.model_copy(update={"parsed": parsed}), True


async def reconcile(
    ref: BatchRef,
    expected: dict[str, bool] | Iterable[str],
    state: BatchState,
    results: AsyncIterator[ResultRecord],
    *,
    report: ReconcileReport | None = None,
    row_ids: Mapping[str, str] | None = None,
    validator: OutputValidator | None = None,
) -> AsyncIterator[ResultRecord]:
    """Exactly one record per id of ``expected`` (ids, or id → wants-JSON from :func:`expected_ids`):
    successes first in the provider's order, then errors, then the unanswered ids in expected
    order. With ``row_ids`` (wire id → row id), records carry the row id instead of the wire id.
    With ``validator``, answers to requests that asked for JSON are checked against the output type."""
    report = report if report is not None else ReconcileReport()
    wants: dict[str, bool] = expected if isinstance(expected, dict) else dict.fromkeys(expected, False)
    report.expected = len(wants)
    succeeded: set[str] = set()
    errored: dict[str, ResultRecord] = {}
    async for record in results:
        custom_id = record.custom_id
        if custom_id not in wants:
            report.unexpected += 1
            if len(report.unexpected_sample) < 10:
                report.unexpected_sample.append(custom_id)
            continue
        if custom_id in succeeded:
            report.duplicates += 1
            continue
        if record.status is not _SUCCEEDED:
            if custom_id in errored:
                report.duplicates += 1
            else:
                errored[custom_id] = record
            continue
        if custom_id in errored:
            del errored[custom_id]
            report.duplicates += 1
        succeeded.add(custom_id)
        report.answered += 1
        if wants[custom_id]:
            record, ok = _with_parsed(record, validator)
            if not ok:
                report.invalid_outputs += 1
                if record.error is not None and record.error.type == "invalid_json_output":
                    report.json_failures += 1
        yield _relabel(record, row_ids)
    for record in errored.values():
        report.answered += 1
        yield _relabel(record, row_ids)
    for custom_id in wants:
        if custom_id not in succeeded and custom_id not in errored:
            report.synthesized += 1
            yield _relabel(_missing_record(custom_id, ref, state), row_ids)
    if report.unexpected:
        log.warning(
            "batch %s returned %d result(s) for ids it was not given, e.g. %s",
            ref.batch_id,
            report.unexpected,
            ", ".join(report.unexpected_sample[:3]),
        )


def _relabel(record: ResultRecord, row_ids: Mapping[str, str] | None) -> ResultRecord:
    if row_ids is not None:
        row = row_ids.get(record.custom_id)
        if row is not None and row != record.custom_id:
            assign(record, "custom_id", row)
    return record
