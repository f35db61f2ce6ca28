"""Wait until every batch of a run has ended.

Deferrable by default: the wait runs in the triggerer as one :class:`BatchWaitTrigger` for all
batches of the run, holding no worker slot. ``deferrable=False`` polls from the worker instead,
one status round per poke (``mode="reschedule"`` frees the slot between pokes).

The timeout is an ending, not a crash: past it the batches are cancelled (``cancel_on_timeout``)
and the wait goes on, for at most ``timeout_grace``, until the provider reports them ended; the
sensor then succeeds with a warning and notes the deadline in the run folder
(``attempt-N/deadline.json``), so collect takes what was answered and retry applies its
``on_timeout`` policy to the rest.

Overdue is not a timeout: a batch still running past ``expected_within`` (or the history's p95 ×
``overdue_factor``) is reported once (warning, ``batches_overdue`` metric, ``on_overdue``) and the
wait goes on: deferred, or poking, the report noted in the run folder (``attempt-N/overdue.json``)
so later pokes do not repeat it (see :mod:`batch_provider.operators._overdue`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.sdk import BaseSensorOperator, PokeReturnValue
from airflow.sdk.exceptions import AirflowException, AirflowSensorTimeout

from batch_provider.core.deadline import DeadlineRecord, record_deadline, record_from_event
from batch_provider.core.fallback_time import check_sync_fallback_at
from batch_provider.core.handle import RunHandle
from batch_provider.core.watch import (
    DEFAULT_POLL_INTERVAL_MAX,
    DEFAULT_POLL_INTERVAL_MIN,
    WatchOutcome,
    poll_round,
    summarise,
    watch_to_end,
)
from batch_provider.hooks.batch import LLMBatchHook
from batch_provider.links.batch import batch_links, persist_batch_links
from batch_provider.operators._common import (
    _cancel,
    defer_until_ended,
    metric_tags,
    record_waits,
    run_dir_of,
    run_sync,
    seconds_of,
    upstream_handle,
)
from batch_provider.operators._overdue import (
    DEFAULT_OVERDUE_FACTOR,
    expectation,
    handle_overdue,
    late_in_round,
    report_overdue,
    wait_expectation,
)
from batch_provider.operators._sync_fallback import first_wait_timeout
from batch_provider.operators._templating import NoSecretTemplating

DEFAULT_TIMEOUT = timedelta(hours=25)
"""Providers end (complete or expire) a batch within 24 h; one more hour covers finalizing."""

DEFAULT_TIMEOUT_GRACE = timedelta(hours=1)
"""After the timeout, how long to wait for the batches to report an ending (a cancel takes
minutes; a batch stuck finalizing may take longer to give its files)."""


def note_deadline(log: Any, handle: RunHandle, record: DeadlineRecord) -> None:
    """Keep the deadline's facts in the run folder; a storage error only costs the note (the
    rows cut off are then resubmitted, as after an expiry, rather than lost)."""
    try:
        record_deadline(run_dir_of(handle), record)
    except Exception as exc:
        log.warning("Could not note the passed deadline in %s: %s", handle.run_path, exc)


def end_in_worker(
    hook: LLMBatchHook, handle: RunHandle, *, grace: Any, cancel: bool, poll: tuple[float, float], log: Any
) -> WatchOutcome:
    """After a deadline passed in the worker: cancel what still runs (when ``cancel``) and wait,
    at most ``grace``, for the provider to report every batch ended."""

    async def end() -> WatchOutcome:
        async with hook.get_backend() as backend:
            states, _ = await poll_round(backend, handle.batch_ids)
            running = [b for b in handle.batch_ids if b not in states or not states[b].is_terminal]
            outcome = await watch_to_end(
                backend,
                running,
                deadline=datetime.now(UTC),
                grace_seconds=seconds_of(grace),
                cancel_at_deadline=cancel,
                poll_interval_min=poll[0],
                poll_interval_max=poll[1],
                on_progress=lambda p: log.info("%s", p.line()),
                log=log,
            )
            outcome.states = {**states, **outcome.states}
            outcome.deadline_passed = True
            return outcome

    return run_sync(end())


class BatchSensor(NoSecretTemplating, BaseSensorOperator):
    """Wait for every batch of a submitted run to end (completed, expired, cancelled or failed).

    Succeeds when all batches have ended, whatever their ending: the collect task sorts out
    successes, errors and partial results. At ``timeout`` the batches still running are
    cancelled when ``cancel_on_timeout`` is set, and the wait goes on until they report an
    ending, for at most ``timeout_grace``: then the sensor succeeds with a warning (the deadline
    is noted in the run folder for the retry step), or fails with :class:`AirflowSensorTimeout`
    if some batch has still not ended (collect, which waits for batches itself, can follow).
    Returns the handle unchanged, so a collect task can follow without arguments.

    :param handle: the submit task's handle; default the only upstream task's return value.
    :param deferrable: wait in the triggerer (default) instead of a worker.
    :param timeout: how long to wait, in seconds or as a timedelta (default 25 h).
    :param poll_interval: first interval between status polls, in seconds; it grows with the time
        waited, up to ``max_poll_interval``. In poke mode it is the poke interval.
    :param cancel_on_timeout: cancel the remote batches when the timeout passes.
    :param timeout_grace: after the timeout, how long to wait for the batches to report an
        ending (default 1 h), deferred like the wait itself.
    :param sync_fallback_at: end the wait earlier, like a timeout, at this time of day (DAG
        timezone, ``"07:00"``) or this long after submit (``timedelta``): the retry task then sends
        the rows cut off to the synchronous API (see ``docs/deadlines.md``).
    :param cancel_on_kill: cancel the remote batches when a user marks the waiting task failed or
        success, or clears it (triggerer ``on_kill``, or the worker's in poke mode).
    :param expected_within: how long after its creation a batch is expected to have ended
        (seconds or timedelta); default: the completion-time history's p95 × ``overdue_factor``,
        and no expectation without history. Deferred and poke/reschedule waits alike.
    :param overdue_factor: multiplies the history's p95 when ``expected_within`` is not given.
    :param on_overdue: called once per wait when a batch runs past its expected end: an Airflow
        notifier or a callable taking the context, which holds ``batch_overdue`` (``message``,
        ``overdue`` per batch, the run's ``progress`` with ``eta_seconds``). The wait goes on.
        "Once" holds across pokes, reschedules and task tries: the report is noted in the run
        folder (``attempt-N/overdue.json``).
    """

    template_fields: Sequence[str] = ("handle",)
    ui_color = "#fff3c4"
    operator_extra_links = batch_links()

    def __init__(
        self,
        *,
        handle: Any = None,
        deferrable: bool = True,
        timeout: timedelta | float = DEFAULT_TIMEOUT,
        poll_interval: float = DEFAULT_POLL_INTERVAL_MIN,
        max_poll_interval: float = DEFAULT_POLL_INTERVAL_MAX,
        cancel_on_timeout: bool = False,
        cancel_on_kill: bool = False,
        timeout_grace: timedelta | float | None = DEFAULT_TIMEOUT_GRACE,
        sync_fallback_at: Any = None,
        expected_within: timedelta | float | None = None,
        overdue_factor: float = DEFAULT_OVERDUE_FACTOR,
        on_overdue: Callable[..., Any] | None = None,
        **kwargs: Any,
    ):
        kwargs.setdefault("poke_interval", poll_interval)
        super().__init__(timeout=timeout, **kwargs)
        self.handle = handle
        self.deferrable = deferrable
        self.poll_interval = poll_interval
        self.max_poll_interval = max_poll_interval
        self.cancel_on_timeout = cancel_on_timeout
        self.cancel_on_kill = cancel_on_kill
        self.timeout_grace = timeout_grace
        self.sync_fallback_at = check_sync_fallback_at(sync_fallback_at)
        if sync_fallback_at is not None:
            self.cancel_on_timeout = True  # the fallback takes over only once the batches stop
        self.expected_within = expected_within
        if overdue_factor <= 0:
            raise ValueError(f"overdue_factor must be > 0, got {overdue_factor!r}")
        self.overdue_factor = overdue_factor
        self.on_overdue = on_overdue
        self._run: RunHandle | None = None
        self._pokes = 0
        self._overdue_reported: set[int] = set()

    def _resolve(self, context: Any) -> tuple[RunHandle, LLMBatchHook]:
        handle = upstream_handle(self, context, self.handle)
        return handle, LLMBatchHook(conn_id=handle.conn_id, provider=handle.provider)

    def execute(self, context: Any) -> Any:
        handle, hook = self._resolve(context)
        self._run = handle
        persist_batch_links(context, handle.provider, handle.batch_ids, hook.get_base_url())
        if not handle.batches:
            self.log.info("The run has no batches (every row rejected or cached): nothing to wait for")
            return handle.model_dump(mode="json")
        if self.sync_fallback_at is not None:
            self.timeout = first_wait_timeout(self, handle, context)
        if not self.deferrable:
            try:
                return super().execute(context)
            except AirflowSensorTimeout as exc:
                outcome = end_in_worker(
                    hook,
                    handle,
                    grace=self.timeout_grace,
                    cancel=self.cancel_on_timeout,
                    poll=(self.poll_interval, self.max_poll_interval),
                    log=self.log,
                )
                record = DeadlineRecord(
                    attempt=handle.attempt,
                    deadline=datetime.now(UTC).isoformat(),
                    cancelled=outcome.cancelled,
                    still_running=outcome.still_running,
                )
                return self._after_deadline(handle, record, str(exc))
        expect = wait_expectation(self, handle)
        self.log.info(
            "Deferring: %d batch(es) to watch, timeout %ss%s%s",
            len(handle.batches),
            self.timeout,
            f"; {expect.usual}" if expect.usual else "",
            f"; overdue after {min(expect.expected_by.values())}" if expect.expected_by else "",
        )
        defer_until_ended(
            self,
            hook,
            handle,
            timeout=self.timeout,
            method_name="execute_complete",
            expected_by=expect.expected_by,
            usual=expect.usual,
        )

    def poke(self, context: Any) -> PokeReturnValue:
        handle, hook = self._resolve(context)
        self._run = handle

        async def one_round() -> Any:
            async with hook.get_backend() as backend:
                return await poll_round(backend, handle.batch_ids)

        states, transient = run_sync(one_round())
        self._pokes += 1
        progress = summarise(
            states,
            len(handle.batch_ids),
            round_no=self._pokes,
            elapsed=0.0,
            next_poll=None,
            transient_errors=transient,
        )
        expect = expectation(handle, expected_within=self.expected_within, overdue_factor=self.overdue_factor)
        self.log.info("%s", progress.line() + (f"; {expect.usual}" if expect.usual else ""))
        done = len(states) == len(handle.batch_ids) and all(s.is_terminal for s in states.values())
        if not done and expect.expected_by:
            late = late_in_round(handle, states, expect.expected_by)
            if late is not None:
                report_overdue(self, context, handle, late, self.on_overdue, reported=self._overdue_reported)
        return PokeReturnValue(is_done=done, xcom_value=handle.model_dump(mode="json") if done else None)

    def execute_complete(self, context: Any, event: dict[str, Any]) -> Any:
        handle = upstream_handle(self, context, self.handle)
        status = event.get("status")
        if status == "success":
            endings: dict[str, int] = {}
            for state in event.get("states", {}).values():
                endings[state.get("ending") or "?"] = endings.get(state.get("ending") or "?", 0) + 1
            self.log.info("All %d batch(es) ended: %s", len(handle.batches), endings)
            record_waits(handle.provider.value, event, metric_tags(context))
            return handle.model_dump(mode="json")
        if status == "overdue":
            handle_overdue(self, context, handle, event, self.on_overdue, method_name="execute_complete")
        if status in ("deadline", "timeout"):
            record_waits(handle.provider.value, event, metric_tags(context))
            record = record_from_event(handle.attempt, event)
            return self._after_deadline(handle, record, event.get("message"))
        raise AirflowException(f"waiting for the batches failed: {event.get('message')}")

    def _after_deadline(self, handle: RunHandle, record: DeadlineRecord, message: Any) -> Any:
        """The timeout passed: note it, then succeed when every batch has ended since."""
        note_deadline(self.log, handle, record)
        if record.still_running:
            raise AirflowSensorTimeout(
                f"{message}; the collect task waits for these batches to end before collecting"
            )
        self.log.warning(
            "The timeout (deadline %s) passed before every batch ended; they have ended since "
            "(cancel requested: %s), so collect takes what they answered",
            record.deadline,
            record.cancelled or "none",
        )
        return handle.model_dump(mode="json")

    def on_kill(self) -> None:
        if self.cancel_on_kill and self._run is not None and not self.deferrable:
            hook = LLMBatchHook(conn_id=self._run.conn_id, provider=self._run.provider)
            _cancel(hook, self._run.batch_ids, self.log)
