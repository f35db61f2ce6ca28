"""One trigger watches every batch of a run.

Invariants:
- kwargs hold only the connection id, provider, batch ids, deadline, grace period, poll
  intervals, the cancel flags, each batch's expected end, the overdue flag and a usual-duration
  phrase: never an API key (the backend is built from the connection
  inside ``run``) and never request or result data.
- Exactly one event is yielded: ``overdue`` when a batch is still running past its
  ``expected_by`` time and ``overdue_notified`` is false (with its progress and the trigger's own
  kwargs, so the task can warn, call its ``on_overdue`` and defer again on the same trigger with
  ``overdue_notified=True``: a batch is reported overdue once per wait, also across triggerer
  restarts); else ``success`` with each batch's final state; ``deadline`` when the
  deadline passed first but every batch then ended (cancelled when ``cancel_at_deadline``, within
  ``grace_seconds``), so its answers can be collected; ``timeout`` with the batches still not
  ended when the grace period ran out; or ``error`` with a message (e.g. a wrong key or an
  unknown batch id). An ``overdue`` check polls each batch once at the expected time; nothing
  else is polled outside the shared poller. States in events are compact (:func:`event_state`),
  so an event stays small for hundreds of batches.
- Every trigger of a triggerer process on the same provider, base URL and key registers its
  batches with one shared poller (:mod:`batch_provider.core.poller`): one HTTP pool and one
  schedule for all of them; the last trigger to leave (or be cancelled) closes it. A restarted
  triggerer re-registers from the kwargs.
- ``on_kill`` (a user marked the deferred task failed/success or cleared it) cancels the remote
  batches when ``cancel_on_kill`` is set; a triggerer restart or redistribution does not, since
  Airflow calls ``cleanup`` then, not ``on_kill``. A restart after the deadline cancels again
  (a no-op for batches already cancelling) and keeps the same grace end (deadline + grace).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from batch_provider.core.errors import BatchProviderError
from batch_provider.core.models import Provider
from batch_provider.core.sweeps import event_state, expected_times
from batch_provider.core.watch import (
    CANCEL_TIMEOUT_SECONDS,
    DEFAULT_POLL_INTERVAL_MAX,
    DEFAULT_POLL_INTERVAL_MIN,
    Progress,
    cancel_batches,
    first_overdue,
    watch_to_end,
)
from batch_provider.hooks.batch import LLMBatchHook

__all__ = ["CANCEL_TIMEOUT_SECONDS", "BatchWaitTrigger", "cancel_batches", "event_state"]

PROGRESS_REPEAT_SECONDS = 600.0
"""A progress line that says nothing new is logged at most this often."""


class BatchWaitTrigger(BaseTrigger):
    """Wait until every batch in ``batch_ids`` has ended, or ``deadline`` passes.

    :param conn_id: Airflow connection to build the backend from.
    :param provider: provider name (``openai``, ``openai_compatible``, ``anthropic``, ``gemini``,
        ``bedrock``); for Bedrock ``conn_id`` is an ``aws`` connection.
    :param batch_ids: the batches to watch (one id may be given as a string).
    :param deadline: ISO-8601 aware datetime; None waits without limit.
    :param poll_interval_min: first interval in seconds; it grows with the time waited.
    :param poll_interval_max: cap on the interval in seconds.
    :param cancel_on_kill: cancel the remote batches when a user kills the deferred task.
    :param cancel_at_deadline: cancel the batches still running when ``deadline`` passes.
    :param grace_seconds: after ``deadline``, how long to keep waiting for the batches to report
        an ending (cancelled, expired, completed) before giving up with a ``timeout`` event.
    :param expected_by: ISO-8601 aware time by which each batch (by id) is expected to have
        ended; a batch still running then ends the trigger with an ``overdue`` event.
    :param overdue_notified: the task was already told: no ``overdue`` event any more.
    :param usual: how long such batches usually take, appended to the progress lines.
    """

    def __init__(
        self,
        *,
        conn_id: str,
        provider: str,
        batch_ids: list[str] | str,
        deadline: str | None = None,
        poll_interval_min: float = DEFAULT_POLL_INTERVAL_MIN,
        poll_interval_max: float = DEFAULT_POLL_INTERVAL_MAX,
        cancel_on_kill: bool = False,
        cancel_at_deadline: bool = False,
        grace_seconds: float | None = None,
        expected_by: dict[str, str] | None = None,
        overdue_notified: bool = False,
        usual: str | None = None,
    ):
        super().__init__()
        self.conn_id = conn_id
        self.provider = Provider(provider).value
        self.batch_ids = [batch_ids] if isinstance(batch_ids, str) else list(batch_ids)
        self.deadline = deadline
        self.poll_interval_min = float(poll_interval_min)
        self.poll_interval_max = float(poll_interval_max)
        self.cancel_on_kill = bool(cancel_on_kill)
        self.cancel_at_deadline = bool(cancel_at_deadline)
        self.grace_seconds = None if grace_seconds is None else float(grace_seconds)
        self.expected_by = dict(expected_by or {})
        self.overdue_notified = bool(overdue_notified)
        self.usual = usual
        self._last_progress: tuple[tuple[Any, ...], float] | None = None

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "conn_id": self.conn_id,
                "provider": self.provider,
                "batch_ids": list(self.batch_ids),
                "deadline": self.deadline,
                "poll_interval_min": self.poll_interval_min,
                "poll_interval_max": self.poll_interval_max,
                "cancel_on_kill": self.cancel_on_kill,
                "cancel_at_deadline": self.cancel_at_deadline,
                "grace_seconds": self.grace_seconds,
                "expected_by": dict(self.expected_by),
                "overdue_notified": self.overdue_notified,
                "usual": self.usual,
            },
        )

    def _hook(self) -> LLMBatchHook:
        return LLMBatchHook(conn_id=self.conn_id, provider=self.provider)

    def _log_progress(self, progress: Progress) -> None:
        """Log a progress line when something changed since the last one, or once every
        ``PROGRESS_REPEAT_SECONDS``: every line goes through the triggerer's supervisor to the
        task's log, and thousands of triggers repeating "0/1 batches ended" would keep it busy."""
        news, now = progress.news(), time.monotonic()
        last = self._last_progress
        if last is None or last[0] != news or now - last[1] >= PROGRESS_REPEAT_SECONDS:
            self._last_progress = (news, now)
            self.log.info("%s", progress.line() + (f"; {self.usual}" if self.usual else ""))

    async def run(self) -> AsyncIterator[TriggerEvent]:
        deadline = datetime.fromisoformat(self.deadline) if self.deadline else None
        # DEBUG: the task logged the same before deferring ("Deferring: …"), and each line costs
        # the triggerer's supervisor a decode and a write, per trigger started.
        self.log.debug(
            "Watching %d %s batch(es) on connection %r until %s%s",
            len(self.batch_ids),
            self.provider,
            self.conn_id,
            self.deadline or "they end",
            f"; {self.usual}" if self.usual else "",
        )
        try:
            lease = await self._hook().apoller()
        except Exception as exc:
            yield TriggerEvent({"status": "error", "message": f"{type(exc).__name__}: {exc}"})
            return
        watch = asyncio.ensure_future(
            watch_to_end(
                lease.backend,
                self.batch_ids,
                deadline=deadline,
                grace_seconds=self.grace_seconds,
                cancel_at_deadline=self.cancel_at_deadline,
                poll_interval_min=self.poll_interval_min,
                poll_interval_max=self.poll_interval_max,
                on_progress=self._log_progress,
                log=self.log,
                watcher=lease.poller.watch_batches,
            )
        )
        event: dict[str, Any]
        try:
            overdue = None
            if self.expected_by and not self.overdue_notified:
                overdue = await self._overdue(lease.backend, watch)
            event = overdue if overdue is not None else self._ended_event(await watch)
        except BatchProviderError as exc:
            event = {"status": "error", "message": f"{type(exc).__name__}: {exc}"}
        finally:
            if not watch.done():
                watch.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await watch
            await lease.release()
        yield TriggerEvent(event)

    def _ended_event(self, outcome: Any) -> dict[str, Any]:
        event: dict[str, Any] = {
            "status": "success",
            "states": {k: event_state(v) for k, v in outcome.states.items()},
        }
        if outcome.deadline_passed:
            event.update(deadline=self.deadline, cancelled=outcome.cancelled)
            if outcome.still_running:
                event.update(
                    status="timeout",
                    pending=outcome.still_running,
                    message=f"deadline {self.deadline} passed and {len(outcome.still_running)} "
                    f"batch(es) had not ended {self.grace_seconds or 0:.0f}s later: "
                    + ", ".join(outcome.still_running[:5]),
                )
            else:
                event.update(
                    status="deadline",
                    message=f"deadline {self.deadline} passed; every batch has ended since "
                    f"({'cancelled' if outcome.cancelled else 'not cancelled'})",
                )
        return event

    async def _overdue(self, backend: Any, watch: asyncio.Future[Any]) -> dict[str, Any] | None:
        """The ``overdue`` event, with the trigger's own kwargs, when a batch is still running past
        its ``expected_by`` time (:func:`~batch_provider.core.watch.first_overdue`); None when the
        watch ends first (or every batch ended in time)."""
        due = expected_times(self.expected_by, self.batch_ids)
        event = await first_overdue(backend, self.batch_ids, due, watch, retry_seconds=self.poll_interval_min)
        if event is None:
            return None
        return {**event, "trigger": self.serialize()[1]}

    async def on_kill(self) -> None:
        if not self.cancel_on_kill:
            return
        self.log.info("Task killed: cancelling %d batch(es)", len(self.batch_ids))
        backend = await self._hook().aget_backend()
        try:
            await asyncio.wait_for(
                cancel_batches(backend, self.batch_ids, log=self.log), CANCEL_TIMEOUT_SECONDS
            )
        finally:
            await backend.aclose()
