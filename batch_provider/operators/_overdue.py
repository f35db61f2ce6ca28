"""Overdue batches: when each batch of a wait is expected to have ended, and what the waiting task
does when one has not.

A batch is expected to end ``expected_within`` after its creation when that is given; otherwise
at its creation plus the completion-time history's p95 for its size × ``overdue_factor``
(:mod:`batch_provider.core.history`). With neither (no ``expected_within`` and no history) there
is no expectation and no alert.

Invariants:
- The trigger tells the task once per wait: the task warns, counts ``batches_overdue``, calls
  ``on_overdue`` and defers again on the same trigger state with ``overdue_notified=True``, so
  neither the re-deferral nor a triggerer restart tells it twice, and no worker slot is held
  while the batches run on.
- An ``on_overdue`` that raises is logged, never fails the wait: the batches are still running
  and worth collecting.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from batch_provider import metrics
from batch_provider.core.handle import RunHandle
from batch_provider.core.history import duration_text, estimate_for
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


def handle_overdue(
    task: Any,
    context: Any,
    handle: RunHandle,
    event: Mapping[str, Any],
    on_overdue: Callable[..., Any] | None,
    *,
    method_name: str,
) -> None:
    """Tell the user (warning, metric, ``on_overdue``), then defer again on the same trigger with
    ``overdue_notified=True`` (raises Airflow's ``TaskDeferred``)."""
    task.log.warning("%s", overdue_text(event))
    metrics.batches_overdue(handle.provider.value, len(event.get("overdue") or {}), metric_tags(context))
    if on_overdue is not None:
        call_on_overdue(task, context, event, on_overdue)
    kwargs = {**dict(event["trigger"]), "overdue_notified": True}
    trigger = BatchWaitTrigger(**kwargs)
    task.defer(trigger=trigger, method_name=method_name, timeout=_remaining(trigger))


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
