"""What every watch loop shares: progress lines, sweeps, poll intervals, the deadline check, and
the compact states and ``overdue`` report a wait tells its task.

The private loop (:func:`batch_provider.core.watch.watch_batches`, one backend per watch) and the
shared poller (:mod:`batch_provider.core.poller`, one schedule for every trigger of a triggerer)
both report through :class:`Sweeps`, so their progress lines agree.

Invariants:
- The interval grows with elapsed time (short while a batch may end quickly, long for batches
  that take hours), clamped to ``[poll_interval_min, poll_interval_max]``.
- A progress line is reported once per sweep: when every batch still pending at the sweep's
  start has answered (or failed transiently) once more.
- Past the deadline :class:`WatchTimeout` carries the last state seen of each batch.
- One overdue report (:func:`overdue_event`) for every kind of wait: the trigger's event, the
  sensor's poke and the retry task's wait in the worker give ``on_overdue`` the same keys.

Nothing here imports Airflow.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from batch_provider.core.models import BatchState

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
        parts.append(f"elapsed {duration_text(self.elapsed_seconds)},")
        parts.append(f"ETA {duration_text(eta) if eta is not None else 'unknown'}")
        if self.endings:
            parts.append("; endings: " + ", ".join(f"{k}={v}" for k, v in sorted(self.endings.items())))
        if self.transient_errors:
            parts.append(f"; {self.transient_errors} polls failed transiently")
        if self.next_poll_seconds is not None:
            parts.append(f"; next poll in {self.next_poll_seconds:.0f}s")
        return " ".join(parts)


def duration_text(seconds: float) -> str:
    """``1h05m``, ``4m10s`` or ``12s``."""
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
        f"deadline {deadline.isoformat()} passed with {len(pending)} of {total} batches not ended ({shown})",
        states=states,
        pending=list(pending),
    )


def event_state(state: BatchState) -> dict[str, Any]:
    """What the waiting task needs of one batch's state: how it ended, when, and why it failed.

    Events are stored in the metadata DB and read back by the task, so they carry no counts or
    other figures the collect step reads from the provider anyway (~100 bytes a batch).
    """
    compact: dict[str, Any] = {"status": state.status.value, "ending": state.ending and state.ending.value}
    for key in ("created_at", "started_at", "ended_at"):
        value = getattr(state, key)
        if value is not None:
            compact[key] = value.isoformat()
    if state.error_message:
        compact["error_message"] = state.error_message
    return compact


def expected_times(expected_by: Mapping[str, str], batch_ids: Iterable[str]) -> dict[str, datetime]:
    """``expected_by`` (batch id → ISO time) as datetimes, for the batches of this wait only."""
    ids = set(batch_ids)
    return {b: datetime.fromisoformat(t) for b, t in expected_by.items() if b in ids}


def late_batches(states: Mapping[str, BatchState], due: Mapping[str, datetime], now: datetime) -> list[str]:
    """The batches read as still running at ``now``, past their expected end (a batch whose poll
    failed transiently is not in ``states`` and is not called late)."""
    return [b for b, t in due.items() if t <= now and b in states and not states[b].is_terminal]


def overdue_event(
    states: Mapping[str, BatchState],
    late: list[str],
    due: Mapping[str, datetime],
    now: datetime,
    total: int,
) -> dict[str, Any]:
    """The ``overdue`` report: each late batch (compact state, native status, expected end, done
    of total) and the run's progress with its ETA, from one poll of every batch (``states``)."""
    created = [s.created_at for s in states.values() if s.created_at is not None]
    elapsed = (now - min(created)).total_seconds() if created else 0.0
    progress = summarise(states, total, round_no=0, elapsed=elapsed, next_poll=None)
    return {
        "status": "overdue",
        "overdue": {
            b: {
                **event_state(states[b]),
                "native_status": states[b].native_status,
                "expected_by": due[b].isoformat(),
                "done": states[b].counts.done,
                "total": states[b].counts.total,
            }
            for b in late
        },
        "progress": {
            "batches_total": progress.batches_total,
            "batches_ended": progress.batches_ended,
            "items_done": progress.items_done,
            "items_total": progress.items_total,
            "fraction": progress.fraction,
            "elapsed_seconds": elapsed,
            "eta_seconds": progress.eta_seconds,
        },
    }
