"""Airflow metrics (StatsD / OpenTelemetry through Airflow's ``Stats``) for batch runs.

Names, all prefixed ``llm_batch.<provider>.``: ``batches_submitted``, ``requests_submitted``
(counted once per batch actually created, never for a re-attached one), ``rows_rejected``,
``batch_wait`` (timer, created → ended), ``batch_queue`` and ``batch_processing`` (timers,
created → started → ended, where the provider says when a batch started), ``batches_overdue``
(batches still running past their expected end), and per finished run ``rows_succeeded``,
``rows_dead_letter``, ``input_tokens``, ``output_tokens``, ``cost_microusd``, ``savings_microusd``
and ``runs_finished``.

Invariant: a metric that cannot be sent is dropped with a debug line; metrics never fail a task.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from datetime import timedelta
from functools import wraps
from typing import Any, ParamSpec

from batch_provider.core.models import BatchRef

log = logging.getLogger(__name__)
PREFIX = "llm_batch"
P = ParamSpec("P")


def _never_raise(fn: Callable[P, None]) -> Callable[P, None]:
    @wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> None:
        try:
            fn(*args, **kwargs)
        except Exception as exc:  # metrics are best effort by design
            log.debug("metric not sent: %s", exc)

    return wrapper


def _stats() -> Any:
    from airflow.sdk.observability.stats import Stats

    return Stats


def batch_created_counter(tags: Mapping[str, str]) -> Callable[[BatchRef], None]:
    """A callback for ``submit_run(on_created=...)`` counting each batch created."""

    @_never_raise
    def count(ref: BatchRef) -> None:
        stats = _stats()
        stats.incr(f"{PREFIX}.{ref.provider.value}.batches_submitted", 1, tags=dict(tags))
        stats.incr(f"{PREFIX}.{ref.provider.value}.requests_submitted", ref.request_count, tags=dict(tags))

    return count


@_never_raise
def rows_rejected(provider: str, count: int, tags: Mapping[str, str]) -> None:
    if count:
        _stats().incr(f"{PREFIX}.{provider}.rows_rejected", count, tags=dict(tags))


@_never_raise
def batch_waited(provider: str, seconds: float, ending: str, tags: Mapping[str, str]) -> None:
    _stats().timing(
        f"{PREFIX}.{provider}.batch_wait", timedelta(seconds=seconds), tags={**tags, "ending": ending}
    )


@_never_raise
def run_finished(summary: Any, tags: Mapping[str, str]) -> None:
    """Once per run, after the dead letter is written: tokens and cost are never counted twice."""
    stats, prefix, labels = _stats(), f"{PREFIX}.{summary.provider}", dict(tags)
    stats.incr(f"{prefix}.rows_succeeded", summary.succeeded, tags=labels)
    stats.incr(f"{prefix}.rows_dead_letter", summary.dead_letter, tags=labels)
    stats.incr(f"{prefix}.input_tokens", summary.usage.input_tokens, tags=labels)
    stats.incr(f"{prefix}.output_tokens", summary.usage.output_tokens, tags=labels)
    stats.incr(f"{prefix}.cost_microusd", round(summary.cost.batch_usd * 1_000_000), tags=labels)
    stats.incr(f"{prefix}.savings_microusd", round(summary.cost.savings_usd * 1_000_000), tags=labels)
    stats.incr(f"{prefix}.runs_finished", 1, tags=labels)


@_never_raise
def batch_timeline(
    provider: str, queue_seconds: float | None, processing_seconds: float | None, tags: Mapping[str, str]
) -> None:
    """``batch_queue`` (created → started) and ``batch_processing`` (started → ended) timers, for
    providers that say when a batch started."""
    stats = _stats()
    if queue_seconds is not None:
        stats.timing(f"{PREFIX}.{provider}.batch_queue", timedelta(seconds=queue_seconds), tags=dict(tags))
    if processing_seconds is not None:
        stats.timing(
            f"{PREFIX}.{provider}.batch_processing", timedelta(seconds=processing_seconds), tags=dict(tags)
        )


@_never_raise
def batches_overdue(provider: str, count: int, tags: Mapping[str, str]) -> None:
    """Batches still running past their expected end (counted once per wait)."""
    _stats().incr(f"{PREFIX}.{provider}.batches_overdue", count, tags=dict(tags))
