"""Watch every batch of a run from one coroutine, on one backend (one HTTP pool).

Invariants:
- One backend instance serves every poll: no client is built per batch or per poll.
- A batch is polled until it is terminal and never again after that.
- Polls of one round run concurrently, bounded by ``max_in_flight`` so a run with thousands of
  batches does not queue thousands of requests on the pool at once.
- The first poll of each batch is jittered over the first interval, so many watchers started
  together do not hit the provider in one burst.
- The interval grows with elapsed time (short while a batch may end quickly, long for batches
  that take hours), clamped to ``[poll_interval_min, poll_interval_max]``.
- Transient provider errors (``retryable`` ones: 429, 5xx) skip a poll; any other error ends the
  watch, because polling again cannot fix a wrong key or an unknown batch id.
- A passed deadline is an ending, not a crash (:func:`watch_to_end`): the batches still running
  are cancelled when asked, and the watch goes on, for at most a grace period, until the provider
  reports them ended, so what they answered can still be collected.
- A batch still running past its expected end is found by :func:`first_overdue` (one poll of
  every batch at the earliest expected end): the trigger ends with that report, a watch in the
  worker (:func:`watch_to_end` with ``on_overdue``) hands it on once and goes on.

Progress, sweeps, intervals and the deadline check live in :mod:`batch_provider.core.sweeps`
(shared with the shared poller) and are importable from here too. Nothing here imports Airflow:
the trigger, the sensor's poke mode and plain scripts share it.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from batch_provider.core.contract import BatchBackend
from batch_provider.core.errors import BatchProviderError
from batch_provider.core.models import BatchEnding, BatchState
from batch_provider.core.sweeps import (
    CANCEL_TIMEOUT_SECONDS,
    DEFAULT_MAX_IN_FLIGHT,
    DEFAULT_POLL_INTERVAL_MAX,
    DEFAULT_POLL_INTERVAL_MIN,
    GROWTH,
    Progress,
    Sweeps,
    WatchTimeout,
    _check_deadline,
    _report,
    duration_text,
    late_batches,
    next_interval,
    overdue_event,
    summarise,
)

__all__ = [
    "CANCEL_TIMEOUT_SECONDS",
    "DEFAULT_MAX_IN_FLIGHT",
    "DEFAULT_POLL_INTERVAL_MAX",
    "DEFAULT_POLL_INTERVAL_MIN",
    "GROWTH",
    "Progress",
    "Sweeps",
    "WatchOutcome",
    "WatchTimeout",
    "_check_deadline",
    "_report",
    "all_succeeded",
    "cancel_batches",
    "duration_text",
    "first_overdue",
    "next_interval",
    "poll_round",
    "summarise",
    "watch_batches",
    "watch_to_end",
]


async def poll_round(
    backend: BatchBackend,
    batch_ids: Iterable[str],
    *,
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
    delays: Mapping[str, float] | None = None,
) -> tuple[dict[str, BatchState], int]:
    """Poll each batch once, concurrently. Returns the states read and the number of polls that
    failed transiently (those batches are missing from the states)."""
    semaphore = asyncio.Semaphore(max_in_flight)
    delays = delays or {}

    async def one(batch_id: str) -> BatchState | None:
        if delay := delays.get(batch_id):
            await asyncio.sleep(delay)
        async with semaphore:
            try:
                return await backend.status(batch_id)
            except BatchProviderError as exc:
                if exc.retryable:
                    return None
                raise

    ids = list(batch_ids)
    results = await asyncio.gather(*(one(b) for b in ids))
    states = {b: s for b, s in zip(ids, results, strict=True) if s is not None}
    return states, len(ids) - len(states)


async def watch_batches(
    backend: BatchBackend,
    batch_ids: Iterable[str],
    *,
    deadline: datetime | None = None,
    poll_interval_min: float = DEFAULT_POLL_INTERVAL_MIN,
    poll_interval_max: float = DEFAULT_POLL_INTERVAL_MAX,
    on_progress: Callable[[Progress], Awaitable[None] | None] | None = None,
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
    jitter: bool = True,
) -> dict[str, BatchState]:
    """Poll until every batch is terminal; return each batch's final state.

    Each batch keeps its own schedule (no round waits for the slowest poll): a poll is started
    when the batch is due and a slot is free, and the batch is due again ``next_interval`` after
    its answer. ``on_progress`` gets one :class:`Progress` per sweep, i.e. once every batch still
    pending at the sweep's start has been polled again (it may be a coroutine function).
    ``deadline`` is an aware datetime; past it, :class:`WatchTimeout` is raised with the last
    states seen.
    """
    if poll_interval_min <= 0 or poll_interval_max < poll_interval_min:
        raise ValueError("need 0 < poll_interval_min <= poll_interval_max")
    ids = list(dict.fromkeys(batch_ids))
    order = {b: i for i, b in enumerate(ids)}
    states: dict[str, BatchState] = {}
    sweeps = Sweeps(ids, on_progress)
    pending = sweeps.pending
    started = sweeps.started
    spread = poll_interval_min if jitter and len(ids) > 1 else 0.0
    # batches waiting for their next poll, by due time; a polling batch is in ``running`` instead
    queue = [(started + random.uniform(0, spread), i, b) for i, b in enumerate(ids)]
    heapq.heapify(queue)
    running: dict[asyncio.Task[BatchState | None], str] = {}

    async def poll(batch_id: str) -> BatchState | None:
        try:
            return await backend.status(batch_id)
        except BatchProviderError as exc:
            if exc.retryable:
                return None
            raise

    try:
        while pending:
            if deadline is not None and datetime.now(UTC) >= deadline:
                _check_deadline(deadline, states, [b for b in ids if b in pending], len(ids))
            now = time.monotonic()
            while queue and queue[0][0] <= now and len(running) < max_in_flight:
                _, _, batch_id = heapq.heappop(queue)
                running[asyncio.ensure_future(poll(batch_id))] = batch_id
            # with every slot taken, only a finished poll can let the next one start
            timeout = max(0.0, queue[0][0] - now) if queue and len(running) < max_in_flight else None
            if deadline is not None:
                left = max(0.0, (deadline - datetime.now(UTC)).total_seconds())
                timeout = left if timeout is None else min(timeout, left)
            if not running:
                await asyncio.sleep(timeout or 0)
                continue
            done, _ = await asyncio.wait(running, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                batch_id = running.pop(task)
                sweeps.answered(batch_id, task.result(), states)  # a non-retryable error propagates
                if batch_id in pending:
                    finished = time.monotonic()
                    wait = next_interval(finished - started, poll_interval_min, poll_interval_max)
                    heapq.heappush(queue, (finished + wait, order[batch_id], batch_id))
            await sweeps.report_if_done(
                states, lambda: max(0.0, queue[0][0] - time.monotonic()) if queue else None
            )
    finally:
        for task in running:
            task.cancel()
    return {b: states[b] for b in ids}


def all_succeeded(states: Mapping[str, BatchState]) -> bool:
    return all(s.ending is BatchEnding.COMPLETED for s in states.values())


async def cancel_batches(backend: Any, batch_ids: list[str], log: Any = None) -> dict[str, str]:
    """Ask the provider to cancel each batch; batches already ended are left as they are.

    Returns ``{batch_id: native status or error}``; one failed cancel does not stop the others.
    """

    async def one(batch_id: str) -> str:
        try:
            state = await backend.cancel(batch_id)
            return state.native_status
        except Exception as exc:
            if log is not None:
                log.warning("Could not cancel batch %s: %s", batch_id, exc)
            return f"error: {type(exc).__name__}"

    results = await asyncio.gather(*(one(b) for b in batch_ids))
    outcome = dict(zip(batch_ids, results, strict=True))
    if log is not None:
        log.info("Cancel requested: %s", outcome)
    return outcome


@dataclass
class WatchOutcome:
    """How a watch ended: every batch's last state; whether the deadline passed first, which
    batches were then cancelled, and which had still not ended when the grace period ran out."""

    states: dict[str, BatchState]
    deadline_passed: bool = False
    cancelled: dict[str, str] = field(default_factory=dict)
    still_running: list[str] = field(default_factory=list)


async def watch_to_end(
    backend: BatchBackend,
    batch_ids: Iterable[str],
    *,
    deadline: datetime | None,
    grace_seconds: float | None,
    cancel_at_deadline: bool,
    poll_interval_min: float = DEFAULT_POLL_INTERVAL_MIN,
    poll_interval_max: float = DEFAULT_POLL_INTERVAL_MAX,
    on_progress: Callable[[Progress], Awaitable[None] | None] | None = None,
    log: Any = None,
    watcher: Callable[..., Awaitable[dict[str, BatchState]]] | None = None,
    expected_by: Mapping[str, datetime] | None = None,
    on_overdue: Callable[[dict[str, Any]], Awaitable[None] | None] | None = None,
) -> WatchOutcome:
    """Watch until every batch has ended; a passed ``deadline`` ends the wait, not the run.

    Past ``deadline`` the batches still running are cancelled (``cancel_at_deadline``), then
    watched again until they report an ending (a cancelled or expired batch keeps the answers
    it already has), for at most ``grace_seconds`` after the deadline. At least one more poll
    is made after the deadline, so a watch resumed late still sees batches that ended meanwhile.
    ``watcher`` replaces :func:`watch_batches` (same signature), e.g. a shared poller's.

    ``expected_by`` (batch id → aware datetime) with ``on_overdue``: the first batch found still
    running past its time (:func:`first_overdue`) is reported once, as the ``overdue`` report of
    :func:`~batch_provider.core.sweeps.overdue_event`, to ``on_overdue`` (it may be a coroutine
    function); the watch goes on meanwhile and after.
    """
    ids = list(dict.fromkeys(batch_ids))
    if expected_by and on_overdue is not None:
        watching = asyncio.ensure_future(
            watch_to_end(
                backend,
                ids,
                deadline=deadline,
                grace_seconds=grace_seconds,
                cancel_at_deadline=cancel_at_deadline,
                poll_interval_min=poll_interval_min,
                poll_interval_max=poll_interval_max,
                on_progress=on_progress,
                log=log,
                watcher=watcher,
            )
        )
        try:
            event = await first_overdue(backend, ids, expected_by, watching, retry_seconds=poll_interval_min)
            if event is not None:
                told = on_overdue(event)
                if asyncio.iscoroutine(told):
                    await told
            return await watching
        finally:
            if not watching.done():
                watching.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await watching
    watch = watcher or watch_batches
    poll = {"poll_interval_min": poll_interval_min, "poll_interval_max": poll_interval_max}
    try:
        states = await watch(backend, ids, deadline=deadline, on_progress=on_progress, **poll)
        return WatchOutcome(states=states)
    except WatchTimeout as exc:
        passed = exc
    if log is not None:
        log.warning("%s", passed)
    cancelled: dict[str, str] = {}
    if cancel_at_deadline and passed.pending:
        try:
            cancelled = await asyncio.wait_for(
                cancel_batches(backend, passed.pending, log=log), CANCEL_TIMEOUT_SECONDS
            )
        except TimeoutError:
            cancelled = {b: "error: no answer in time" for b in passed.pending}
    assert deadline is not None  # only a deadline raises WatchTimeout
    end = max(
        deadline + timedelta(seconds=grace_seconds or 0.0),
        datetime.now(UTC) + timedelta(seconds=poll_interval_min),
    )
    try:
        ended = await watch(
            backend, passed.pending, deadline=end, on_progress=on_progress, jitter=False, **poll
        )
    except WatchTimeout as again:
        return WatchOutcome(
            states={**passed.states, **again.states},
            deadline_passed=True,
            cancelled=cancelled,
            still_running=list(again.pending),
        )
    return WatchOutcome(states={**passed.states, **ended}, deadline_passed=True, cancelled=cancelled)


async def first_overdue(
    backend: BatchBackend,
    batch_ids: list[str],
    due: Mapping[str, datetime],
    watch: asyncio.Future[Any],
    *,
    retry_seconds: float,
) -> dict[str, Any] | None:
    """Wait until the earliest time in ``due`` (batch id → aware datetime) of a batch not known to
    have ended; then poll every batch once. The ``overdue`` report
    (:func:`~batch_provider.core.sweeps.overdue_event`) when one is still running past its time;
    None when ``watch`` (the watch of the same batches) ends first, or every batch ended in time.
    A due batch whose poll failed transiently is asked again after ``retry_seconds``."""
    ended: set[str] = set()
    while True:
        waiting = [t for b, t in due.items() if b not in ended]
        if not waiting:
            break
        left = (min(waiting) - datetime.now(UTC)).total_seconds()
        done, _ = await asyncio.wait({watch}, timeout=max(left, 0.0))
        if done:
            return None
        states, _ = await poll_round(backend, batch_ids)
        ended.update(b for b, state in states.items() if state.is_terminal)
        now = datetime.now(UTC)
        late = late_batches(states, due, now)
        if late:
            return overdue_event(states, late, due, now, len(batch_ids))
        if any(t <= now and b not in states for b, t in due.items() if b not in ended):
            # the poll of a due batch failed transiently: ask again after the shortest interval
            done, _ = await asyncio.wait({watch}, timeout=retry_seconds)
            if done:
                return None
    await watch
    return None
