"""The shared poller's policy, on an in-memory backend: sharing by key, closing, jitter, the
in-flight bound, fairness and Retry-After for the whole pool."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter

import httpx2
import pytest

from batch_provider.backends.transport import Transport
from batch_provider.core.errors import NotFoundError, RateLimitedError
from batch_provider.core.models import BatchEnding, BatchState, BatchStatus
from batch_provider.core.poller import BatchPoller, acquire_poller, pool_key, pools_of_running_loop


def running(batch_id: str) -> BatchState:
    return BatchState(batch_id=batch_id, status=BatchStatus.RUNNING, native_status="in_progress")


def ended(batch_id: str) -> BatchState:
    return BatchState(
        batch_id=batch_id, status=BatchStatus.ENDED, ending=BatchEnding.COMPLETED, native_status="ended"
    )


class TimedBackend:
    """Each batch ends on its ``polls_to_end``-th poll; every poll is time-stamped."""

    def __init__(self, polls_to_end: int = 1_000_000, latency: float = 0.0) -> None:
        self.polls_to_end = polls_to_end
        self.latency = latency
        self.calls: list[tuple[float, str]] = []
        self.counts: Counter[str] = Counter()
        self.in_flight = 0
        self.peak = 0
        self.closed = False
        self.fail: dict[str, BaseException] = {}

    async def status(self, batch_id: str) -> BatchState:
        self.calls.append((time.monotonic(), batch_id))
        self.counts[batch_id] += 1
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            if self.latency:
                await asyncio.sleep(self.latency)
            if (error := self.fail.pop(batch_id, None)) is not None:
                raise error
            return ended(batch_id) if self.counts[batch_id] >= self.polls_to_end else running(batch_id)
        finally:
            self.in_flight -= 1

    async def aclose(self) -> None:
        self.closed = True


async def watch_for(poller: BatchPoller, ids: list[str], seconds: float, interval: float) -> None:
    """Watch ``ids`` for ``seconds``, then leave (cancelled like a trigger)."""
    poll = {"poll_interval_min": interval, "poll_interval_max": interval}
    task = asyncio.ensure_future(poller.watch_batches(None, ids, **poll))
    await asyncio.sleep(seconds)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await poller.stop()


def test_pool_key_names_the_endpoint_but_not_the_key() -> None:
    a = pool_key("openai", {"api_key": "sk-secret-1", "base_url": "http://x/v1"})
    assert "sk-secret-1" not in a and a.startswith("openai|http://x/v1|")
    assert a == pool_key("openai", {"base_url": "http://x/v1", "api_key": "sk-secret-1"})
    assert a != pool_key("openai", {"api_key": "sk-secret-2", "base_url": "http://x/v1"})
    assert a != pool_key("anthropic", {"api_key": "sk-secret-1", "base_url": "http://x/v1"})


async def test_one_poller_per_key_closed_when_the_last_user_leaves() -> None:
    built: list[TimedBackend] = []

    async def build() -> TimedBackend:
        await asyncio.sleep(0.01)  # users arriving during the build share it
        built.append(TimedBackend())
        return built[-1]

    first, second, other = await asyncio.gather(
        acquire_poller("k1", build), acquire_poller("k1", build), acquire_poller("k2", build)
    )
    assert len(built) == 2 and first.poller is second.poller and other.poller is not first.poller
    assert set(pools_of_running_loop()) == {"k1", "k2"}
    await first.release()
    await first.release()  # idempotent: does not take second's hold
    assert not first.backend.closed and "k1" in pools_of_running_loop()
    await second.release()
    assert first.backend.closed and set(pools_of_running_loop()) == {"k2"}
    again = await acquire_poller("k1", build)
    assert again.poller is not first.poller and len(built) == 3
    await again.release()
    await other.release()
    assert pools_of_running_loop() == {}


async def test_a_failed_build_reaches_every_waiting_user_and_keeps_nothing() -> None:
    async def build() -> TimedBackend:
        await asyncio.sleep(0.01)
        raise ValueError("connection 'x' has no API key")

    results = await asyncio.gather(*(acquire_poller("k", build) for _ in range(3)), return_exceptions=True)
    assert [type(r) for r in results] == [ValueError] * 3
    assert pools_of_running_loop() == {}


def test_pollers_are_per_event_loop() -> None:
    async def lease_and_keep():
        lease = await acquire_poller("k", _build_timed)
        await lease.release()
        return lease.poller

    first, second = asyncio.run(lease_and_keep()), asyncio.run(lease_and_keep())
    assert first is not second


async def _build_timed() -> TimedBackend:
    return TimedBackend()


async def test_first_polls_are_jittered_over_the_first_interval() -> None:
    backend = TimedBackend(polls_to_end=1)
    poller = BatchPoller(backend)
    poller.start()
    try:
        started = time.monotonic()
        ids = [f"b{i}" for i in range(200)]
        states = await poller.watch_batches(None, ids, poll_interval_min=0.5, poll_interval_max=0.5)
    finally:
        await poller.stop()
    assert set(states) == set(ids)
    offsets = sorted(t - started for t, _ in backend.calls)
    assert offsets[-1] < 0.5 + 0.1  # every first poll within the first interval
    assert offsets[len(offsets) // 2] > 0.1  # spread out, not one burst at registration
    assert sum(1 for o in offsets if o < 0.25) < 150


async def test_in_flight_bound_and_no_batch_starved() -> None:
    """40 batches, 4 polls at a time, 20 ms each: capacity 200 polls/s for a demand of 400/s.
    Due order means every batch gets its share: poll counts differ by at most one or two."""
    backend = TimedBackend(latency=0.02)
    poller = BatchPoller(backend, max_in_flight=4)
    poller.start()
    ids = [f"b{i}" for i in range(40)]
    await watch_for(poller, ids, 1.5, 0.1)
    assert backend.peak == 4
    counts = [backend.counts[b] for b in ids]
    assert min(counts) >= 5 and max(counts) - min(counts) <= 2
    assert poller.watched == 0  # the cancelled watcher left; nothing is polled for nobody


async def test_a_batch_watched_twice_is_polled_once_per_due_time() -> None:
    backend = TimedBackend(polls_to_end=4)
    poller = BatchPoller(backend)
    poller.start()
    try:
        poll = {"poll_interval_min": 0.05, "poll_interval_max": 0.05}
        one, two = await asyncio.gather(
            poller.watch_batches(None, ["shared", "own"], **poll),
            poller.watch_batches(None, ["shared"], **poll),
        )
    finally:
        await poller.stop()
    assert one["shared"].is_terminal and two["shared"].is_terminal
    assert backend.counts["shared"] == 4 and backend.counts["own"] == 4


async def test_retry_after_holds_every_poll_of_the_pool() -> None:
    backend = TimedBackend(latency=0.01)
    limited = RateLimitedError("429", status_code=429)
    limited.retry_after = 0.6
    backend.fail["b0"] = limited
    poller = BatchPoller(backend, rand=lambda low, high: 0.0)  # first polls all due at once
    poller.start()
    await watch_for(poller, [f"b{i}" for i in range(10)], 1.0, 0.1)
    first_round_end = max(t for t, _ in backend.calls[:10])
    later = [t for t, _ in backend.calls[10:]]
    assert later and min(later) - first_round_end >= 0.55  # nobody polled while held


async def test_non_retryable_error_ends_every_watcher_of_that_batch() -> None:
    backend = TimedBackend()
    backend.fail["gone"] = NotFoundError("404 no such batch", status_code=404)
    poller = BatchPoller(backend)
    poller.start()
    try:
        poll = {"poll_interval_min": 0.05, "poll_interval_max": 0.05}
        results = await asyncio.gather(
            poller.watch_batches(None, ["gone"], **poll),
            poller.watch_batches(None, ["gone", "other"], **poll),
            return_exceptions=True,
        )
    finally:
        await poller.stop()
    assert [type(r) for r in results] == [NotFoundError, NotFoundError]
    assert poller.watched == 0


async def test_transport_retry_after_holds_new_calls_on_the_pool() -> None:
    answers = iter([httpx2.Response(429, headers={"retry-after": "3"}, json={"error": {"message": "slow"}})])

    def handler(request: httpx2.Request) -> httpx2.Response:
        return next(answers, httpx2.Response(200, json={"id": "b"}))

    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    client = httpx2.AsyncClient(transport=httpx2.MockTransport(handler))
    transport = Transport(
        provider="openai", base_url="http://api.test/v1", credential_headers={}, client=client, sleep=sleep
    )
    try:
        await transport.json("GET", "batches/b", operation="get batch")
        assert slept == [3.0]  # the 429'd call waits what it was told, once
        await transport.json("GET", "batches/c", operation="get batch")
        assert len(slept) == 2 and 2.5 < slept[1] <= 3.0  # a new call waits out the same hold
    finally:
        await client.aclose()


def test_default_cadence_notices_an_end_soon_and_stays_under_60_calls_per_batch_hour() -> None:
    """The documented promise: an end is noticed within max(30 s, 10 % of the time waited), and a
    batch costs at most 60 status calls in any hour (54 in the first, 12 afterwards)."""
    from batch_provider.core.watch import DEFAULT_POLL_INTERVAL_MAX, DEFAULT_POLL_INTERVAL_MIN, next_interval

    polls, t = [0.0], 0.0
    while t < 24 * 3600:
        t += next_interval(t, DEFAULT_POLL_INTERVAL_MIN, DEFAULT_POLL_INTERVAL_MAX)
        polls.append(t)
    for before, after in itertools.pairwise(polls):
        assert after - before <= max(30.0, 0.1 * after)  # an end just after ``before`` is seen at ``after``
    per_hour = Counter(int(p // 3600) for p in polls[1:])
    assert per_hour[0] == 54 and max(per_hour.values()) <= 60 and per_hour[5] == 12


async def test_a_connection_is_resolved_once_for_every_caller_until_it_expires() -> None:
    from batch_provider.core.poller import resolve_once

    fetched: list[int] = []

    async def fetch() -> dict:
        fetched.append(1)
        await asyncio.sleep(0.01)
        return {"api_key": "k", "n": len(fetched)}

    results = await asyncio.gather(*(resolve_once("conn-a", fetch, ttl=0.2) for _ in range(50)))
    assert len(fetched) == 1 and all(r["n"] == 1 for r in results)
    await asyncio.sleep(0.25)
    assert (await resolve_once("conn-a", fetch, ttl=0.2))["n"] == 2  # expired: looked up again

    async def broken() -> dict:
        await asyncio.sleep(0.01)
        raise LookupError("no connection 'conn-b'")

    errors = await asyncio.gather(*(resolve_once("conn-b", broken) for _ in range(3)), return_exceptions=True)
    assert [type(e) for e in errors] == [LookupError] * 3
    assert (await resolve_once("conn-b", fetch))["n"] == 3  # a failure is not kept


async def test_a_caller_cancelled_while_building_does_not_fail_the_others() -> None:
    started = asyncio.Event()

    async def slow_build() -> TimedBackend:
        started.set()
        await asyncio.sleep(0.05)
        return TimedBackend()

    builder = asyncio.ensure_future(acquire_poller("k", slow_build))
    await started.wait()
    waiter = asyncio.ensure_future(acquire_poller("k", slow_build))
    await asyncio.sleep(0)
    builder.cancel()
    lease = await waiter  # builds the poller itself
    assert builder.cancelled() and not lease.backend.closed
    await lease.release()
    assert pools_of_running_loop() == {}
