"""Reconciliation: one record per expected id, whatever the provider returned."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from batch_provider.backends.openai.backend import OpenAIBackend
from batch_provider.core.models import (
    BatchEnding,
    BatchRef,
    BatchState,
    BatchStatus,
    ItemStatus,
    LLMRequest,
    ResultError,
    ResultRecord,
)
from batch_provider.core.reconcile import ReconcileReport, expected_ids, reconcile
from batch_provider.core.split import split_requests

REF = BatchRef(
    provider="openai", batch_id="batch_1", chunk_index=0, request_count=4, created_at=datetime.now(UTC)
)


def state(ending: BatchEnding) -> BatchState:
    return BatchState(batch_id="batch_1", status=BatchStatus.ENDED, ending=ending, native_status=ending.value)


async def records(*items: ResultRecord) -> AsyncIterator[ResultRecord]:
    for item in items:
        yield item


def ok(custom_id: str, text: str = "fine", finish: str = "stop") -> ResultRecord:
    return ResultRecord(
        custom_id=custom_id, status=ItemStatus.SUCCEEDED, output_text=text, finish_reason=finish
    )


@pytest.mark.parametrize(
    ("ending", "status", "kind"),
    [
        (BatchEnding.EXPIRED, ItemStatus.EXPIRED, "batch_expired"),
        (BatchEnding.CANCELLED, ItemStatus.CANCELLED, "batch_cancelled"),
        (BatchEnding.FAILED, ItemStatus.ERRORED, "batch_failed"),
        (BatchEnding.COMPLETED, ItemStatus.ERRORED, "missing_result"),
    ],
)
async def test_missing_ids_are_synthesized(ending: BatchEnding, status: ItemStatus, kind: str) -> None:
    report = ReconcileReport()
    out = [
        r
        async for r in reconcile(
            REF,
            ["a", "b", "c", "d"],
            state(ending),
            records(ok("b"), ok("b"), ok("zz"), ok("d")),
            report=report,
        )
    ]
    assert [r.custom_id for r in out] == ["b", "d", "a", "c"]
    assert [r.status for r in out[2:]] == [status, status]
    assert all(r.error.type == kind and r.error.retryable for r in out[2:])
    assert (report.duplicates, report.unexpected, report.synthesized, report.answered) == (1, 1, 2, 2)


async def test_json_outputs_are_parsed(tmp_path: Path) -> None:
    backend = OpenAIBackend(api_key="k")
    schema = {"type": "object"}
    requests = [
        LLMRequest(
            custom_id=f"r{i}", model="m", messages=[{"role": "user", "content": "x"}], response_schema=schema
        )
        for i in range(3)
    ]
    requests.append(LLMRequest(custom_id="plain", model="m", messages=[{"role": "user", "content": "x"}]))
    [chunk] = list(split_requests(requests, backend, tmp_path))
    expected = expected_ids(chunk.path, backend)
    assert expected == {"r0": True, "r1": True, "r2": True, "plain": False}
    answers = records(
        ok("r0", '{"a": 1}'), ok("r1", "{not json"), ok("r2", '{"a"', "length"), ok("plain", "{x")
    )
    out = {r.custom_id: r async for r in reconcile(REF, expected, state(BatchEnding.COMPLETED), answers)}
    assert out["r0"].parsed == {"a": 1} and out["r0"].status is ItemStatus.SUCCEEDED
    assert out["r1"].status is ItemStatus.INVALID_OUTPUT and out["r1"].error.retryable
    assert out["r1"].error.type == "invalid_json_output" and out["r1"].output_text == "{not json"
    assert out["r2"].status is ItemStatus.INVALID_OUTPUT and not out["r2"].error.retryable
    assert out["plain"].status is ItemStatus.SUCCEEDED and out["plain"].parsed is None


async def test_errors_pass_through_unchanged() -> None:
    failed = ResultRecord(
        custom_id="a",
        status=ItemStatus.ERRORED,
        error=ResultError(type="invalid_request_error", message="bad", retryable=False),
    )
    out = [r async for r in reconcile(REF, {"a": True}, state(BatchEnding.COMPLETED), records(failed))]
    assert out == [failed]


def failed(custom_id: str, retryable: bool = True) -> ResultRecord:
    return ResultRecord(
        custom_id=custom_id,
        status=ItemStatus.ERRORED,
        error=ResultError(type="server_error", message="boom", retryable=retryable),
    )


async def test_a_success_beats_an_error_whatever_the_order_and_strays_are_counted() -> None:
    report = ReconcileReport()
    stream = records(
        failed("a"),
        ok("a", "late answer"),
        ok("b", "first"),
        failed("b"),
        failed("c"),
        failed("c", False),
        ok("stray"),
        failed("other-run"),
    )
    ended = state(BatchEnding.COMPLETED)
    out = [r async for r in reconcile(REF, ["a", "b", "c", "d"], ended, stream, report=report)]
    by_id = {r.custom_id: r for r in out}
    assert len(out) == 4 and sorted(by_id) == ["a", "b", "c", "d"]
    assert by_id["a"].status is ItemStatus.SUCCEEDED and by_id["a"].output_text == "late answer"
    assert by_id["b"].status is ItemStatus.SUCCEEDED and by_id["b"].output_text == "first"
    assert by_id["c"].error.retryable is True  # the first of two errors
    assert by_id["d"].error.type == "missing_result"
    assert (report.duplicates, report.unexpected, report.answered, report.synthesized) == (3, 2, 3, 1)


async def test_records_carry_the_row_ids_of_their_wire_ids() -> None:
    rows = {"bpw1": "os.path.join", "bpw2": "a b/c", "bpw3": "ü" * 300}
    stream = records(ok("bpw1"), failed("bpw2"))
    out = [r async for r in reconcile(REF, list(rows), state(BatchEnding.EXPIRED), stream, row_ids=rows)]
    assert [r.custom_id for r in out] == ["os.path.join", "a b/c", "ü" * 300]
    assert [r.status for r in out] == [ItemStatus.SUCCEEDED, ItemStatus.ERRORED, ItemStatus.EXPIRED]
