"""One polling scheduler per (event loop, provider, base URL, credentials): many waiters, one pool.

A triggerer runs thousands of wait triggers in one event loop. Each used to build its own backend
(its own HTTP pool) and its own poll loop; here they share one :class:`BatchPoller` per pool key,
which owns every watched batch and polls each on its own schedule.

Invariants:
- One poller, hence one backend and one HTTP pool, per ``(running loop, pool key)``. The registry
  is per loop (tests and scripts run many loops; an HTTP pool must not outlive or cross its
  loop), and nothing is shared across processes.
- Pool keys never hold a secret: :func:`pool_key` is the provider, the base URL and a hash of
  the backend options (key included).
- The poller lives while it has users: :func:`acquire_poller` adds one, :meth:`PollerLease.release`
  removes one (also on cancellation); when the last leaves, the scheduler stops and the backend
  is closed. A later acquire builds a fresh one.
- A batch watched by several callers is polled once per due time and every caller gets each
  answer. A batch with no caller left is not polled again.
- First polls are spread uniformly over ``[0, poll_interval_min)`` (no burst when thousands
  register together); afterwards a batch is due ``next_interval(time since it was registered)``
  after each answer. Due batches are started in due-time order (ties: registration order), so
  no batch waits behind batches that became due after it.
- A connection is resolved once per ``(loop, connection id)`` and reused for
  ``CONNECTION_REUSE_SECONDS`` (:func:`resolve_once`): a triggerer starting 10,000 triggers on one
  connection asks its secrets backends once, not 10,000 times; a rotated key reaches new triggers
  within that time. Resolved options stay in memory only, like the backend that uses them.
- At most ``max_in_flight`` status calls run at once. A poll that fails with a ``Retry-After``
  (``retry_after`` on the error) holds every dispatch of the pool until that time has passed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import heapq
import json
import random
import time
import weakref
from collections.abc import Awaitable, Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from batch_provider.core.contract import BatchBackend
from batch_provider.core.errors import BatchProviderError
from batch_provider.core.models import BatchState
from batch_provider.core.sweeps import (
    DEFAULT_POLL_INTERVAL_MAX,
    DEFAULT_POLL_INTERVAL_MIN,
    Progress,
    Sweeps,
    _check_deadline,
    next_interval,
)
from batch_provider.core.transport_policy import TransportPolicy

POLL_MAX_IN_FLIGHT = 100
"""Status calls in flight per pool: about ``POLL_MAX_IN_FLIGHT / latency`` polls a second (1,000/s
at 100 ms), more than one core can parse."""

POLL_POOL_SHARDS = 4

POLL_POLICY = TransportPolicy(
    max_connections=POLL_MAX_IN_FLIGHT,
    max_keepalive_connections=POLL_MAX_IN_FLIGHT,
    max_in_flight=POLL_MAX_IN_FLIGHT,
    pool_shards=POLL_POOL_SHARDS,
)
"""The transport of a shared poller: as many connections kept open as polls in flight, over
``POLL_POOL_SHARDS`` pools (each call probes every idle connection of its pool)."""

CONNECTION_REUSE_SECONDS = 60.0

Outcome = BatchState | BaseException | None
"""What one poll gave a watcher: a state, the error that ended it, or None (a transient failure)."""


def pool_key(provider: str, options: Mapping[str, Any]) -> str:
    """``provider|base URL|hash of every option``: equal for the same endpoint and credentials,
    and free of the credentials themselves."""
    digest = hashlib.sha256(json.dumps(dict(options), sort_keys=True, default=repr).encode()).hexdigest()
    return f"{provider}|{options.get('base_url') or 'default'}|{digest[:24]}"


@dataclass(eq=False)
class _Watched:
    batch_id: str
    since: float
    interval_min: float
    interval_max: float
    watchers: set[_Watch] = field(default_factory=set)
    due: float = 0.0
    seq: int = 0
    polling: bool = False


class _Watch:
    """One caller's registration: the answers for its batches arrive on ``updates``."""

    def __init__(self, ids: list[str]) -> None:
        self.ids = ids
        self.updates: asyncio.Queue[tuple[str, Outcome]] = asyncio.Queue()


class BatchPoller:
    """The scheduler of one pool: owns every watched batch and the one backend that polls them."""

    def __init__(
        self,
        backend: BatchBackend,
        *,
        max_in_flight: int = POLL_MAX_IN_FLIGHT,
        clock: Callable[[], float] = time.monotonic,
        rand: Callable[[float, float], float] = random.uniform,
    ) -> None:
        self.backend = backend
        self.max_in_flight = max_in_flight
        self.in_flight = 0
        self.polls = 0
        self.paused_until = 0.0
        self._clock = clock
        self._rand = rand
        self._batches: dict[str, _Watched] = {}
        self._queue: list[tuple[float, int, str]] = []
        self._seq = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._polling: set[asyncio.Task[None]] = set()  # strong references while they run

    @property
    def watched(self) -> int:
        return len(self._batches)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._dispatch(), name="batch-poller")

    async def stop(self) -> None:
        """Stop dispatching and cancel the polls still running (nobody waits for them)."""
        for task in list(self._polling):
            task.cancel()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def register(
        self,
        batch_ids: Iterable[str],
        *,
        poll_interval_min: float,
        poll_interval_max: float,
        jitter: bool = True,
    ) -> _Watch:
        """Watch ``batch_ids`` for one caller; its answers arrive on the returned watch's queue."""
        watch = _Watch(list(dict.fromkeys(batch_ids)))
        now = self._clock()
        for batch_id in watch.ids:
            entry = self._batches.get(batch_id)
            if entry is None:
                entry = _Watched(batch_id, now, poll_interval_min, poll_interval_max)
                self._batches[batch_id] = entry
                self._schedule(entry, now + (self._rand(0.0, poll_interval_min) if jitter else 0.0))
            else:
                entry.interval_min = min(entry.interval_min, poll_interval_min)
                entry.interval_max = min(entry.interval_max, poll_interval_max)
                if not jitter and not entry.polling and entry.due > now:
                    self._schedule(entry, now)
            entry.watchers.add(watch)
        self._wake.set()
        return watch

    def unregister(self, watch: _Watch) -> None:
        for batch_id in watch.ids:
            entry = self._batches.get(batch_id)
            if entry is not None:
                entry.watchers.discard(watch)
                if not entry.watchers:
                    del self._batches[batch_id]

    def next_poll_in(self, batch_ids: Iterable[str]) -> float | None:
        dues = [e.due for b in batch_ids if (e := self._batches.get(b)) is not None and not e.polling]
        return max(0.0, min(dues) - self._clock()) if dues else None

    def _schedule(self, entry: _Watched, due: float) -> None:
        self._seq += 1
        entry.due, entry.seq = due, self._seq
        heapq.heappush(self._queue, (due, self._seq, entry.batch_id))

    async def _dispatch(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            now = self._clock()
            while self._queue and self.in_flight < self.max_in_flight and now >= self.paused_until:
                due, seq, batch_id = self._queue[0]
                if due > now:
                    break
                heapq.heappop(self._queue)
                entry = self._batches.get(batch_id)
                if entry is None or entry.seq != seq:
                    continue  # unregistered or rescheduled since
                entry.polling = True
                self.in_flight += 1
                task = loop.create_task(self._poll(entry))
                self._polling.add(task)
                task.add_done_callback(self._polling.discard)
            self._wake.clear()
            if now < self.paused_until:
                timeout: float | None = self.paused_until - now
            elif self._queue and self.in_flight < self.max_in_flight:
                timeout = max(0.0, self._queue[0][0] - now)
            else:
                timeout = None  # wait for a registration or a finished poll
            timer = loop.call_later(timeout, self._wake.set) if timeout is not None else None
            await self._wake.wait()
            if timer is not None:
                timer.cancel()

    async def _poll(self, entry: _Watched) -> None:
        outcome: Outcome
        try:
            outcome = await self.backend.status(entry.batch_id)
        except BatchProviderError as exc:
            outcome = None if exc.retryable else exc
            if (retry_after := getattr(exc, "retry_after", None)) is not None:
                self.paused_until = max(self.paused_until, self._clock() + retry_after)
        except Exception as exc:  # a bug or a broken backend: the watchers decide, not this task
            outcome = exc
        finally:
            self.in_flight -= 1
            self.polls += 1
            entry.polling = False
            self._wake.set()
        for watch in entry.watchers:
            watch.updates.put_nowait((entry.batch_id, outcome))
        ended = isinstance(outcome, BaseException) or (outcome is not None and outcome.is_terminal)
        if self._batches.get(entry.batch_id) is entry:
            if ended:
                del self._batches[entry.batch_id]
            else:
                finished = self._clock()
                wait = next_interval(finished - entry.since, entry.interval_min, entry.interval_max)
                self._schedule(entry, finished + wait)

    async def watch_batches(
        self,
        backend: Any,
        batch_ids: Iterable[str],
        *,
        deadline: datetime | None = None,
        poll_interval_min: float = DEFAULT_POLL_INTERVAL_MIN,
        poll_interval_max: float = DEFAULT_POLL_INTERVAL_MAX,
        on_progress: Callable[[Progress], Awaitable[None] | None] | None = None,
        jitter: bool = True,
    ) -> dict[str, BatchState]:
        """:func:`batch_provider.core.watch.watch_batches` on this shared scheduler (``backend`` is
        ignored: the poller's own serves): the same result, progress sweeps, deadline and errors."""
        if poll_interval_min <= 0 or poll_interval_max < poll_interval_min:
            raise ValueError("need 0 < poll_interval_min <= poll_interval_max")
        watch = self.register(
            batch_ids, poll_interval_min=poll_interval_min, poll_interval_max=poll_interval_max, jitter=jitter
        )
        ids = watch.ids
        states: dict[str, BatchState] = {}
        sweeps = Sweeps(ids, on_progress)
        try:
            while sweeps.pending:
                left = None if deadline is None else (deadline - datetime.now(UTC)).total_seconds()
                if left is not None and left <= 0:
                    _check_deadline(deadline, states, [b for b in ids if b in sweeps.pending], len(ids))
                try:
                    async with asyncio.timeout(left):
                        batch_id, outcome = await watch.updates.get()
                except TimeoutError:
                    continue
                if isinstance(outcome, BaseException):
                    raise outcome
                sweeps.answered(batch_id, outcome, states)
                await sweeps.report_if_done(states, lambda: self.next_poll_in(sweeps.pending))
        finally:
            self.unregister(watch)
        return {b: states[b] for b in ids}


@dataclass
class _Pool:
    poller: asyncio.Future[BatchPoller]
    users: int = 0


_REGISTRY: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, _Pool]]
_REGISTRY = weakref.WeakKeyDictionary()


def pools_of_running_loop() -> dict[str, _Pool]:
    """The pools of the running loop, by key (for tests and diagnostics)."""
    return _REGISTRY.setdefault(asyncio.get_running_loop(), {})


class PollerLease:
    """One user's hold on a shared poller; :meth:`release` exactly once (idempotent)."""

    def __init__(self, key: str, pool: _Pool, poller: BatchPoller) -> None:
        self.key = key
        self.poller = poller
        self._pool = pool
        self._released = False

    @property
    def backend(self) -> BatchBackend:
        return self.poller.backend

    async def release(self) -> None:
        if self._released:
            return
        self._released = True
        self._pool.users -= 1
        if self._pool.users == 0:
            pools = pools_of_running_loop()
            if pools.get(self.key) is self._pool:
                del pools[self.key]
            await self.poller.stop()
            await self.poller.backend.aclose()


async def acquire_poller(
    key: str, build: Callable[[], Awaitable[BatchBackend]], *, max_in_flight: int = POLL_MAX_IN_FLIGHT
) -> PollerLease:
    """A lease on the running loop's poller for ``key``, building its backend with ``build`` when
    there is none. Callers arriving while the backend is being built wait for that one build; if
    it fails, every one of them gets its error and nothing is kept."""
    pools = pools_of_running_loop()
    pool = pools.get(key)
    if pool is None:
        pool = pools[key] = _Pool(asyncio.get_running_loop().create_future())
        pool.users += 1
        try:
            poller = BatchPoller(await build(), max_in_flight=max_in_flight)
        except BaseException as exc:
            pool.users -= 1
            if pools.get(key) is pool:
                del pools[key]
            if isinstance(exc, asyncio.CancelledError):
                pool.poller.cancel()
            else:
                pool.poller.set_exception(exc)
                pool.poller.exception()  # retrieved here: no "never retrieved" warning when alone
            raise
        poller.start()
        pool.poller.set_result(poller)
        return PollerLease(key, pool, poller)
    pool.users += 1
    try:
        poller = await asyncio.shield(pool.poller)
    except BaseException:
        pool.users -= 1
        task = asyncio.current_task()
        if pool.poller.cancelled() and task is not None and not task.cancelling():
            # the caller building it was cancelled, not this one: build it here
            return await acquire_poller(key, build, max_in_flight=max_in_flight)
        raise
    return PollerLease(key, pool, poller)


_Resolved = dict[Hashable, tuple[float, asyncio.Future[Any]]]
_RESOLVED: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Resolved]
_RESOLVED = weakref.WeakKeyDictionary()


async def resolve_once(
    key: Hashable, fetch: Callable[[], Awaitable[Any]], *, ttl: float = CONNECTION_REUSE_SECONDS
) -> Any:
    """``fetch()``'s result for ``key``, fetched at most once per ``ttl`` seconds in the running
    loop; callers arriving during a fetch share it. A failed fetch is not kept: its callers get
    its error and the next caller fetches again."""
    loop = asyncio.get_running_loop()
    cache = _RESOLVED.setdefault(loop, {})
    while True:
        hit = cache.get(key)
        if hit is not None and hit[0] > time.monotonic():
            try:
                return await asyncio.shield(hit[1])
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if hit[1].cancelled() and task is not None and not task.cancelling():
                    continue  # the fetching caller was cancelled, not this one: fetch again
                raise
        future: asyncio.Future[Any] = loop.create_future()
        cache[key] = (time.monotonic() + ttl, future)
        try:
            value = await fetch()
        except BaseException as exc:
            if cache.get(key, (0.0, None))[1] is future:
                del cache[key]
            if isinstance(exc, asyncio.CancelledError):
                future.cancel()
            else:
                future.set_exception(exc)
                future.exception()  # retrieved: no warning when nobody else waited
            raise
        future.set_result(value)
        return value
