"""The result cache is optional: ``store_safely`` retries a failing write with a backoff, then
counts what it could not store instead of raising."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from batch_provider.core.cache import ResultCache
from batch_provider.core.models import ItemStatus, ResultError, ResultRecord


def entries(n: int) -> list[tuple[str, ResultRecord]]:
    ok = [
        (f"{i:064x}", ResultRecord(custom_id=f"r{i}", status=ItemStatus.SUCCEEDED, output_text="a"))
        for i in range(n)
    ]
    failed = ResultRecord(
        custom_id="bad", status=ItemStatus.ERRORED, error=ResultError(type="x", message="m", retryable=True)
    )
    return [*ok, (f"{10**6:064x}", failed)]


@pytest.fixture
def cache(tmp_path: Path, monkeypatch) -> ResultCache:
    monkeypatch.setattr("batch_provider.core.cache.time.sleep", lambda seconds: None)
    return ResultCache(tmp_path / "cache")


def test_a_write_that_recovers_stores_everything(cache, monkeypatch):
    real, calls = cache.put_many, []

    def flaky(batch):
        calls.append(1)
        if len(calls) < 3:
            raise OSError("503 Slow Down")
        real(batch)

    monkeypatch.setattr(cache, "put_many", flaky)
    assert cache.store_safely(entries(4)) == 0
    assert len(calls) == 3
    assert set(cache.get_many(k for k, _ in entries(4))) == {k for k, _ in entries(4)[:4]}


def test_a_write_that_keeps_failing_is_counted_and_logged(cache, monkeypatch, caplog):
    def broken(batch):
        raise OSError("InternalError")

    monkeypatch.setattr(cache, "put_many", broken)
    with caplog.at_level(logging.WARNING, logger="batch_provider.core.cache"):
        assert cache.store_safely(entries(4)) == 4  # the errored record was never to be stored
    assert "4 entries not stored after 4 tries" in caplog.text
