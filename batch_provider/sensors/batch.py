"""Wait until every batch of a run has ended.

Deferrable by default: the wait runs in the triggerer as one :class:`BatchWaitTrigger` for all
batches of the run, holding no worker slot. ``deferrable=False`` polls from the worker instead,
one status round per poke (``mode="reschedule"`` frees the slot between pokes).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from airflow.sdk import BaseSensorOperator, PokeReturnValue
from airflow.sdk.exceptions import AirflowException, AirflowSensorTimeout

from batch_provider.core.handle import RunHandle
from batch_provider.core.watch import (
    DEFAULT_POLL_INTERVAL_MAX,
    DEFAULT_POLL_INTERVAL_MIN,
    poll_round,
    summarise,
)
from batch_provider.hooks.batch import LLMBatchHook
from batch_provider.links.batch import batch_links, persist_batch_links
from batch_provider.operators._common import (
    _cancel,
    defer_until_ended,
    metric_tags,
    record_waits,
    run_sync,
    upstream_handle,
)
from batch_provider.operators._templating import NoSecretTemplating

DEFAULT_TIMEOUT = timedelta(hours=25)
"""Providers end (complete or expire) a batch within 24 h; one more hour covers finalizing."""


class BatchSensor(NoSecretTemplating, BaseSensorOperator):
    """Wait for every batch of a submitted run to end (completed, expired, cancelled or failed).

    Succeeds when all batches have ended, whatever their ending: the collect task sorts out
    successes, errors and partial results. Fails at ``timeout`` with the batches still running,
    cancelling them first when ``cancel_on_timeout`` is set (so their partial results can be
    collected). Returns the handle unchanged, so a collect task can follow without arguments.

    :param handle: the submit task's handle; default the only upstream task's return value.
    :param deferrable: wait in the triggerer (default) instead of a worker.
    :param timeout: how long to wait, in seconds or as a timedelta (default 25 h).
    :param poll_interval: first interval between status polls, in seconds; it grows with the time
        waited, up to ``max_poll_interval``. In poke mode it is the poke interval.
    :param cancel_on_timeout: cancel the remote batches when the timeout passes.
    :param cancel_on_kill: cancel the remote batches when a user marks the waiting task failed or
        success, or clears it (triggerer ``on_kill``, or the worker's in poke mode).
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
        self._run: RunHandle | None = None
        self._pokes = 0

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
        if not self.deferrable:
            try:
                return super().execute(context)
            except AirflowSensorTimeout:
                if self.cancel_on_timeout:
                    _cancel(hook, handle.batch_ids, self.log)
                raise
        self.log.info("Deferring: %d batch(es) to watch, timeout %ss", len(handle.batches), self.timeout)
        defer_until_ended(self, hook, handle, timeout=self.timeout, method_name="execute_complete")

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
        self.log.info("%s", progress.line())
        done = len(states) == len(handle.batch_ids) and all(s.is_terminal for s in states.values())
        return PokeReturnValue(is_done=done, xcom_value=handle.model_dump(mode="json") if done else None)

    def execute_complete(self, context: Any, event: dict[str, Any]) -> Any:
        handle, hook = self._resolve(context)
        status = event.get("status")
        if status == "success":
            endings: dict[str, int] = {}
            for state in event.get("states", {}).values():
                endings[state.get("ending") or "?"] = endings.get(state.get("ending") or "?", 0) + 1
            self.log.info("All %d batch(es) ended: %s", len(handle.batches), endings)
            record_waits(handle.provider.value, event, metric_tags(context))
            return handle.model_dump(mode="json")
        if status == "timeout":
            if self.cancel_on_timeout:
                _cancel(hook, handle.batch_ids, self.log)
                self.log.info("Cancelled; collect the partial results once the batches report 'cancelled'")
            raise AirflowSensorTimeout(f"batches did not end in time: {event.get('message')}")
        raise AirflowException(f"waiting for the batches failed: {event.get('message')}")

    def on_kill(self) -> None:
        if self.cancel_on_kill and self._run is not None and not self.deferrable:
            hook = LLMBatchHook(conn_id=self._run.conn_id, provider=self._run.provider)
            _cancel(hook, self._run.batch_ids, self.log)
