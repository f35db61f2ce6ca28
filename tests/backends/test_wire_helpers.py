"""Helpers the backends share: reading one field of a line, counts from provider totals."""

from __future__ import annotations

import json

import pytest

from batch_provider.backends.wire import counts_of_totals, string_field_reader
from batch_provider.core.models import BatchCounts, BatchEnding, BatchStatus


def test_string_field_reader_reads_a_top_level_string_and_falls_back_for_other_values() -> None:
    read = string_field_reader("key")
    assert read(b'{"key":"a-1","request":{}}') == "a-1"
    assert read(json.dumps({"key": 'q"\\é', "request": {}}, ensure_ascii=False).encode()) == 'q"\\é'
    assert read(b'{"request":{},"key":"late"}') == "late"
    assert read(b'{"key":"' + b"x" * 40 + b'","request":{}}') == "x" * 40
    assert read(b'{"key":7,"request":{}}') == "7"


@pytest.mark.parametrize(
    ("status", "ending", "expected"),
    [
        (BatchStatus.RUNNING, None, {"processing": 5}),
        (BatchStatus.ENDED, BatchEnding.EXPIRED, {"expired": 5}),
        (BatchStatus.ENDED, BatchEnding.CANCELLED, {"cancelled": 5}),
        (BatchStatus.ENDED, BatchEnding.COMPLETED, {}),
        (BatchStatus.ENDED, BatchEnding.FAILED, {}),
    ],
)
def test_counts_of_totals_places_the_unanswered_rest(
    status: BatchStatus, ending: BatchEnding | None, expected: dict[str, int]
) -> None:
    assert counts_of_totals(10, 4, 1, status, ending) == BatchCounts(
        total=10, succeeded=4, errored=1, **expected
    )
    assert counts_of_totals(3, 4, 1, status, ending).processing == 0
