"""The Airflow-free polling loop: concurrency, progress, transient errors, deadlines."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from airflow_fakes import ScriptedBackend

from batch_provider.core.errors import AuthenticationError
from batch_provider.core.watch import Progress, WatchTimeout, next_interval, watch_batches


async def test_watches_every_batch_until_all_end():
    backend = ScriptedBackend(polls_to_end=2)
    seen: list[Progress] = []
    states = await watch_batches(
        backend, ["b1", "b2", "b3"], poll_interval_min=0.01, poll_interval_max=0.02, on_progress=seen.append
    )
    assert set(states) == {"b1", "b2", "b3"}
    assert all(s.is_terminal and s.ending.value == "completed" for s in states.values())
    # every batch polled until terminal and not after
    assert backend.polls == {"b1": 3, "b2": 3, "b3": 3}
    assert len(seen) == 3
    assert seen[-1].batches_ended == 3 and seen[-1].fraction == 1.0
    assert "3/3 batches ended" in seen[-1].line()
    assert "0/3 batches ended" in seen[0].line() and "ETA" in seen[0].line()


async def test_async_progress_callback_and_duplicate_ids():
    backend = ScriptedBackend(polls_to_end=0)
    lines: list[str] = []

    async def on_progress(p: Progress) -> None:
        lines.append(p.line())

    states = await watch_batches(backend, ["b1", "b1"], poll_interval_min=0.01, on_progress=on_progress)
    assert list(states) == ["b1"] and len(lines) == 1


async def test_transient_errors_skip_a_poll():
    backend = ScriptedBackend(polls_to_end=1, flaky=["b2"])
    seen: list[Progress] = []
    states = await watch_batches(backend, ["b1", "b2"], poll_interval_min=0.01, on_progress=seen.append)
    assert all(s.is_terminal for s in states.values())
    assert seen[0].transient_errors == 1
    assert "failed transiently" in seen[0].line()


async def test_non_retryable_error_ends_the_watch():
    class Denied(ScriptedBackend):
        async def status(self, batch_id):
            raise AuthenticationError("401 invalid key", status_code=401)

    with pytest.raises(AuthenticationError):
        await watch_batches(Denied(), ["b1"], poll_interval_min=0.01)


async def test_deadline_raises_with_last_states():
    backend = ScriptedBackend(polls_to_end=10_000)
    deadline = datetime.now(UTC) + timedelta(seconds=0.2)
    with pytest.raises(WatchTimeout) as info:
        await watch_batches(backend, ["b1", "b2"], deadline=deadline, poll_interval_min=0.05, jitter=False)
    assert info.value.pending == ["b1", "b2"]
    assert set(info.value.states) == {"b1", "b2"}
    assert "2 of 2 batches not ended" in str(info.value)


def test_interval_grows_with_elapsed_time_and_is_capped():
    assert next_interval(0, 5, 300) == 5
    assert next_interval(600, 5, 300) == 60
    assert next_interval(100_000, 5, 300) == 300


def test_eta_from_progress():
    p = Progress(
        round=2,
        batches_total=2,
        batches_ended=0,
        items_total=100,
        items_done=25,
        items_errored=1,
        elapsed_seconds=60,
        next_poll_seconds=10,
    )
    assert p.eta_seconds == pytest.approx(180)
    assert "25/100 requests done (25%)" in p.line() and "1 errored so far" in p.line()


async def test_in_flight_bound_and_per_batch_schedules():
    import asyncio

    class Slow(ScriptedBackend):
        in_flight = 0
        peak = 0

        async def status(self, batch_id):
            Slow.in_flight += 1
            Slow.peak = max(Slow.peak, Slow.in_flight)
            await asyncio.sleep(0.01)
            Slow.in_flight -= 1
            return await super().status(batch_id)

    backend = Slow(polls_to_end=2)
    ids = [f"b{i}" for i in range(20)]
    states = await watch_batches(backend, ids, poll_interval_min=0.01, max_in_flight=3)
    assert Slow.peak == 3
    assert all(s.is_terminal for s in states.values()) and list(states) == ids
    assert set(backend.polls.values()) == {3}  # never polled again once ended
