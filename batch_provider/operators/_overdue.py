"""Overdue batches: when each batch of a wait is expected to have ended, and what the waiting task
does when one has not.

A batch is expected to end ``expected_within`` after its creation when that is given; otherwise
at its creation plus the completion-time history's p95 for its size × ``overdue_factor``
(:mod:`batch_provider.core.history`). With neither (no ``expected_within`` and no history) there
is no expectation and no alert.

Every kind of wait reports: the deferred sensor and the retry task's deferred attempts through
the trigger's ``overdue`` event, the sensor's poke and reschedule modes from the poke that finds a
late batch, the retry task's attempts waited for in the worker from its watch
(:func:`~batch_provider.core.watch.watch_to_end` with ``on_overdue``). All give ``on_overdue`` the
same report (:func:`~batch_provider.core.sweeps.overdue_event`).

Invariants:
- One report per attempt: the task warns, counts ``batches_overdue``, calls ``on_overdue``, then
  notes it in the run folder (``attempt-N/overdue.json``, :mod:`batch_provider.core.overdue`).
  A wait in the worker reads the note before reporting, so neither the next poke (a new task
  instance in reschedule mode) nor a restarted worker reports again; a deferred wait defers again
  on the same trigger state with ``overdue_notified=True`` (no worker slot held while the batches
  run on, no second event after a re-deferral or a triggerer restart) and a new try of the task
  reads the note before deferring.
- An ``on_overdue`` that raises is logged, never fails the wait: the batches are still running
  and worth collecting. A note that cannot be written is logged too; the task instance still
  remembers it told.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from batch_provider import metrics
from batch_provider.core.handle import RunHandle
from batch_provider.core.history import duration_text, estimate_for
from batch_provider.core.models import BatchState
from batch_provider.core.overdue import note_overdue, overdue_noted
from batch_provider.core.sweeps import expected_times, late_batches, overdue_event
from batch_provider.operators._common import _defer_timeout, metric_tags, run_dir_of, seconds_of
from batch_provider.triggers.batch import BatchWaitTrigger

DEFAULT_OVERDUE_FACTOR = 1.5


@dataclass(frozen=True)
class Expectation:
    expected_by: dict[str, str]
    """Batch id → ISO time by which it is expected to have ended (empty: no alert)."""
    usual: str | None
    """"usually done in X (p95 Y)" for the run's largest batch, when there is history."""


def expectation(
    handle: RunHandle,
    *,
    expected_within: timedelta | float | None,
    overdue_factor: float = DEFAULT_OVERDUE_FACTOR,
    log: Any = None,
) -> Expectation:
    """Each batch's expected end, from ``expected_within`` or the history, and the usual phrase."""
    within = seconds_of(expected_within)
    expected: dict[str, str] = {}
    usual: str | None = None
    largest = -1
    root = None
    try:
        root = run_dir_of(handle).root
    except Exception as exc:  # no readable run folder: no history, still an explicit expectation
        if log is not None:
            log.warning("No completion-time history for %s: %s", handle.run_path, exc)
    for ref in handle.batches:
        estimate = None
        if root is not None:
            estimate = estimate_for(root, handle.provider.value, ref.model, ref.request_count)
        if estimate is not None and ref.request_count > largest:
            largest, usual = ref.request_count, estimate.phrase()
        seconds = within
        if seconds is None and estimate is not None:
            seconds = estimate.p95_seconds * overdue_factor
        if seconds is not None:
            created = ref.created_at if ref.created_at.tzinfo else ref.created_at.replace(tzinfo=UTC)
            expected[ref.batch_id] = (created + timedelta(seconds=seconds)).isoformat()
    return Expectation(expected_by=expected, usual=usual)


def overdue_text(event: Mapping[str, Any]) -> str:
    """One line: which batches are late, how far along, and the run's ETA."""
    late = event.get("overdue") or {}
    progress = event.get("progress") or {}
    parts = [
        f"{b} ({info.get('done', 0)}/{info.get('total', 0)} done, expected by {info.get('expected_by')})"
        for b, info in list(late.items())[:5]
    ]
    more = f" and {len(late) - 5} more" if len(late) > 5 else ""
    eta = progress.get("eta_seconds")
    return (
        f"{len(late)} batch(es) still running past their expected end: {', '.join(parts)}{more}; "
        f"run {progress.get('items_done', 0)}/{progress.get('items_total', 0)} requests done, "
        f"{progress.get('batches_ended', 0)}/{progress.get('batches_total', 0)} batches ended, "
        f"ETA {duration_text(eta) if eta is not None else 'unknown'}"
    )


def wait_expectation(task: Any, handle: RunHandle) -> Expectation:
    """The expectation of a wait about to defer, from the task's ``expected_within`` and
    ``overdue_factor``; without expected ends when the attempt was already reported overdue (a
    new try of the task), so it is not reported twice."""
    expect = expectation(
        handle, expected_within=task.expected_within, overdue_factor=task.overdue_factor, log=task.log
    )
    if expect.expected_by and already_reported(task, handle):
        task.log.info("Attempt %d was already reported overdue: no second report", handle.attempt)
        return Expectation(expected_by={}, usual=expect.usual)
    return expect


def already_reported(task: Any, handle: RunHandle, reported: set[int] | None = None) -> bool:
    """Whether the attempt of ``handle`` was reported overdue: by this task instance (in
    ``reported``), or as the run folder's note says."""
    if reported is not None and handle.attempt in reported:
        return True
    try:
        return overdue_noted(run_dir_of(handle), handle.attempt)
    except Exception as exc:  # an unreadable run folder: no note to go by
        task.log.warning("Could not read the overdue note of %s: %s", handle.run_path, exc)
        return False


def report_overdue(
    task: Any,
    context: Any,
    handle: RunHandle,
    event: Mapping[str, Any],
    on_overdue: Callable[..., Any] | None,
    *,
    reported: set[int] | None = None,
) -> bool:
    """Tell the user (warning, ``batches_overdue``, ``on_overdue``) that the attempt of ``handle``
    has batches past their expected end, unless it was told already; then note it in the run
    folder (and in ``reported``). True when told now."""
    if already_reported(task, handle, reported):
        return False
    task.log.warning("%s", overdue_text(event))
    metrics.batches_overdue(handle.provider.value, len(event.get("overdue") or {}), metric_tags(context))
    if on_overdue is not None:
        call_on_overdue(task, context, event, on_overdue)
    if reported is not None:
        reported.add(handle.attempt)
    try:
        note_overdue(run_dir_of(handle), handle.attempt, event, task_id=str(getattr(task, "task_id", "")))
    except Exception as exc:
        task.log.warning("Could not note the overdue report in %s: %s", handle.run_path, exc)
    return True


def handle_overdue(
    task: Any,
    context: Any,
    handle: RunHandle,
    event: Mapping[str, Any],
    on_overdue: Callable[..., Any] | None,
    *,
    method_name: str,
    kwargs: dict[str, Any] | None = None,
) -> None:
    """The trigger's ``overdue`` event: tell the user (:func:`report_overdue`), then defer again
    on the same trigger with ``overdue_notified=True`` and the same ``kwargs`` for
    ``method_name`` (raises Airflow's ``TaskDeferred``)."""
    report_overdue(task, context, handle, event, on_overdue)
    trigger = BatchWaitTrigger(**{**dict(event["trigger"]), "overdue_notified": True})
    task.defer(trigger=trigger, method_name=method_name, kwargs=kwargs, timeout=_remaining(trigger))


def late_in_round(
    handle: RunHandle, states: Mapping[str, BatchState], expected_by: Mapping[str, str]
) -> dict[str, Any] | None:
    """The ``overdue`` report of one status round (a poke) when a batch read as still running is
    past its expected end; else None."""
    due = expected_times(expected_by, handle.batch_ids)
    now = datetime.now(UTC)
    late = late_batches(states, due, now)
    if not late:
        return None
    return overdue_event(states, late, due, now, len(handle.batch_ids))


def call_on_overdue(
    task: Any, context: Any, event: Mapping[str, Any], on_overdue: Callable[..., Any]
) -> None:
    """Call ``on_overdue`` with the task's context plus ``batch_overdue`` (the event's batches,
    progress and ``message``): an Airflow notifier renders and sends, a callable gets it as is."""
    details = {
        "message": overdue_text(event),
        "overdue": dict(event.get("overdue") or {}),
        "progress": dict(event.get("progress") or {}),
    }
    callback_context = {**dict(context), "batch_overdue": details}
    try:
        on_overdue(callback_context)
    except Exception as exc:
        task.log.warning("on_overdue failed (the wait goes on): %s: %s", type(exc).__name__, exc)


def _remaining(trigger: BatchWaitTrigger) -> timedelta | None:
    """Airflow's deferral timeout for the re-deferral: what is left of the trigger's own deadline
    and grace, plus the usual backstop."""
    if trigger.deadline is None:
        return None
    left = (datetime.fromisoformat(trigger.deadline) - datetime.now(UTC)).total_seconds()
    return _defer_timeout(max(left, 0.0) + (trigger.grace_seconds or 0.0), trigger.poll_interval_max)
