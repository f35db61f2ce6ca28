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

Nothing here imports Airflow: the trigger, the sensor's poke mode and plain scripts share it.
"""

from __future__ import annotations

import asyncio
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

DEFAULT_POLL_INTERVAL_MIN = 5.0
DEFAULT_POLL_INTERVAL_MAX = 300.0
DEFAULT_MAX_IN_FLIGHT = 64
CANCEL_TIMEOUT_SECONDS = 20.0
GROWTH = 0.1
"""Interval as a fraction of the time already spent waiting: after 10 min, poll once a minute."""


class WatchTimeout(TimeoutError):
    """The deadline passed before every batch ended. ``states`` holds the last state seen of each
    batch polled at least once; ``pending`` the ids still not terminal."""

    def __init__(self, message: str, *, states: Mapping[str, BatchState], pending: list[str]):
        super().__init__(message)
        self.states = dict(states)
        self.pending = pending


@dataclass(frozen=True)
class Progress:
    """One poll round, summarised. Item counts are the providers' own (0 when unknown)."""

    round: int
    batches_total: int
    batches_ended: int
    items_total: int
    items_done: int
    items_errored: int
    elapsed_seconds: float
    next_poll_seconds: float | None
    transient_errors: int = 0
    endings: Mapping[str, int] = field(default_factory=dict)

    def news(self) -> tuple[Any, ...]:
        """What a progress line says beyond time passing: equal news, nothing new to log."""
        return (
            self.batches_ended,
            self.items_total,
            self.items_done,
            self.items_errored,
            self.transient_errors,
            tuple(sorted(self.endings.items())),
        )

    @property
    def fraction(self) -> float:
        if self.items_total:
            return min(1.0, self.items_done / self.items_total)
        if self.batches_total:
            return self.batches_ended / self.batches_total
        return 1.0

    @property
    def eta_seconds(self) -> float | None:
        """Linear extrapolation of the time left; None until there is progress to go by."""
        fraction = self.fraction
        if fraction <= 0 or fraction >= 1 or self.elapsed_seconds <= 0:
            return None
        return self.elapsed_seconds * (1 - fraction) / fraction

    def line(self) -> str:
        eta = self.eta_seconds
        parts = [
            f"poll {self.round}:",
            f"{self.batches_ended}/{self.batches_total} batches ended,",
        ]
        if self.items_total:
            parts.append(f"{self.items_done}/{self.items_total} requests done")
        parts.append(f"({self.fraction:.0%}),")
        parts.append(f"{self.items_errored} errored so far,")
        parts.append(f"elapsed {_duration(self.elapsed_seconds)},")
        parts.append(f"ETA {_duration(eta) if eta is not None else 'unknown'}")
        if self.endings:
            parts.append("; endings: " + ", ".join(f"{k}={v}" for k, v in sorted(self.endings.items())))
        if self.transient_errors:
            parts.append(f"; {self.transient_errors} polls failed transiently")
        if self.next_poll_seconds is not None:
            parts.append(f"; next poll in {self.next_poll_seconds:.0f}s")
        return " ".join(parts)


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def next_interval(elapsed: float, poll_interval_min: float, poll_interval_max: float) -> float:
    """The wait before the next round, growing with the time already waited."""
    return max(poll_interval_min, min(poll_interval_max, elapsed * GROWTH))


def summarise(
    states: Mapping[str, BatchState],
    total: int,
    *,
    round_no: int,
    elapsed: float,
    next_poll: float | None,
    transient_errors: int = 0,
) -> Progress:
    ended = [s for s in states.values() if s.is_terminal]
    endings: dict[str, int] = {}
    for state in ended:
        key = state.ending.value if state.ending else "unknown"
        endings[key] = endings.get(key, 0) + 1
    return Progress(
        round=round_no,
        batches_total=total,
        batches_ended=len(ended),
        items_total=sum(s.counts.total for s in states.values()),
        items_done=sum(s.counts.done for s in states.values()),
        items_errored=sum(s.counts.errored for s in states.values()),
        elapsed_seconds=elapsed,
        next_poll_seconds=next_poll,
        transient_errors=transient_errors,
        endings=endings,
    )


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


class Sweeps:
    """Progress once per sweep: when every batch still pending at the sweep's start has answered
    (or failed transiently) once more. Shared by every watch loop, so their progress lines agree."""

    def __init__(
        self, ids: list[str], on_progress: Callable[[Progress], Awaitable[None] | None] | None
    ) -> None:
        self.ids = ids
        self.on_progress = on_progress
        self.started = time.monotonic()
        self.pending = set(ids)
        self._sweep = set(ids)
        self._count = 0
        self._transient = 0

    def answered(self, batch_id: str, state: BatchState | None, states: dict[str, BatchState]) -> None:
        """Record one poll's outcome (``None``: failed transiently) into ``states``."""
        if state is None:
            self._transient += 1
        else:
            states[batch_id] = state
            if state.is_terminal:
                self.pending.discard(batch_id)
        self._sweep.discard(batch_id)

    async def report_if_done(
        self, states: Mapping[str, BatchState], next_poll: Callable[[], float | None]
    ) -> None:
        """Report a :class:`Progress` when the sweep is complete or nothing is pending."""
        if self._sweep and self.pending:
            return
        self._count += 1
        await _report(
            self.on_progress,
            summarise(
                states,
                len(self.ids),
                round_no=self._count,
                elapsed=time.monotonic() - self.started,
                next_poll=next_poll(),
                transient_errors=self._transient,
            ),
        )
        self._sweep, self._transient = set(self.pending), 0


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


async def _report(
    on_progress: Callable[[Progress], Awaitable[None] | None] | None, progress: Progress
) -> None:
    if on_progress is None:
        return
    outcome = on_progress(progress)
    if asyncio.iscoroutine(outcome):
        await outcome


def _check_deadline(
    deadline: datetime | None, states: Mapping[str, BatchState], pending: list[str], total: int
) -> None:
    if deadline is None or datetime.now(UTC) < deadline:
        return
    shown = ", ".join(pending[:5]) + (f" and {len(pending) - 5} more" if len(pending) > 5 else "")
    raise WatchTimeout(
        f"deadline {deadline.isoformat()} passed with {len(pending)} of {total} "
        f"batches not ended ({shown})",
        states=states,
        pending=list(pending),
    )


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
) -> WatchOutcome:
    """Watch until every batch has ended; a passed ``deadline`` ends the wait, not the run.

    Past ``deadline`` the batches still running are cancelled (``cancel_at_deadline``), then
    watched again until they report an ending (a cancelled or expired batch keeps the answers
    it already has), for at most ``grace_seconds`` after the deadline. At least one more poll
    is made after the deadline, so a watch resumed late still sees batches that ended meanwhile.
    ``watcher`` replaces :func:`watch_batches` (same signature), e.g. a shared poller's.
    """
    watch = watcher or watch_batches
    ids = list(dict.fromkeys(batch_ids))
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
