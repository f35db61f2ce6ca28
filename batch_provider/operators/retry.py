"""Retry: resubmit a run's retryable failures until they succeed or attempts run out.

Invariant: XCom carries only summaries (paths, ids, counts): never request or result data, never
a key. Re-running the task re-attaches to the attempts the run's ledger already records.

Over 400 lines because a third of it is the operator's parameters and their documentation
(deadlines, sync fallback, overdue alerts, result options); the work itself is in the core.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.sdk import Asset, BaseOperator, ObjectStoragePath
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from batch_provider import metrics
from batch_provider.core.collection import RunSummary, collect_run
from batch_provider.core.deadline import (
    DEFAULT_ON_TIMEOUT,
    DeadlineRecord,
    OnTimeout,
    check_on_timeout,
    record_from_event,
)
from batch_provider.core.fallback_time import check_sync_fallback_at
from batch_provider.core.handle import RunHandle
from batch_provider.core.ledger import Ledger
from batch_provider.core.retry import resubmit_retryable, write_dead_letter
from batch_provider.core.submission import handle_for
from batch_provider.core.sweeps import expected_times
from batch_provider.core.watch import DEFAULT_POLL_INTERVAL_MAX, DEFAULT_POLL_INTERVAL_MIN, watch_to_end
from batch_provider.hooks.batch import LLMBatchHook
from batch_provider.links.batch import batch_links, persist_batch_links
from batch_provider.operators._common import (
    _BatchOperatorMixin,
    _cancel,
    deadline_after,
    defer_until_ended,
    metric_tags,
    outlets_with,
    pull_upstream,
    record_waits,
    run_dir_of,
    run_sync,
    seconds_of,
    upstream_handle,
)
from batch_provider.operators._overdue import (
    DEFAULT_OVERDUE_FACTOR,
    handle_overdue,
    report_overdue,
    wait_expectation,
)
from batch_provider.operators._sync_fallback import fallback_step, fell_back
from batch_provider.operators.collect import _publish, log_cost, warn_cache_gaps
from batch_provider.sensors.batch import DEFAULT_TIMEOUT_GRACE, note_deadline


class RetryBatchOperator(_BatchOperatorMixin, BaseOperator):
    """Resubmit the retryable failures of a run until they succeed or attempts run out.

    Each round: ``resubmit_retryable`` (rate limits, server errors, expired and cancelled items;
    never invalid requests) → wait in the triggerer (``deferrable=True``) or in the worker →
    collect. Then every item still unresolved goes to ``dead_letter.jsonl`` and the manifest is
    final. Re-running this task re-attaches to the attempts already created.

    Returns ``RunSummary.for_xcom()`` of the final run.

    :param handle: the handle of the last collected attempt; default the upstream task's value
        (the collect task returns it as ``handle``).
    :param max_attempts: attempts in all, the first submission included.
    :param fail_on_dead_letter: fail the task when any item ends in the dead letter file.
    :param attempt_timeout: how long to wait for each resubmitted attempt.
    :param cancel_on_timeout: cancel an attempt's batches when its wait times out; the wait
        then goes on, for at most ``timeout_grace``, until they report an ending.
    :param timeout_grace: after an attempt's timeout, how long to wait for its batches to end.
    :param on_timeout: what happens to rows a passed deadline cut off (the first wait's or an
        attempt's): ``"partial"`` (default) ends the run with them in the dead letter and the
        task green with a warning; ``"fail"`` does the same, then fails the task; ``"retry"``
        resubmits them like after a provider-side expiry.
    :param expected_within: how long after its creation a resubmitted batch is expected to have
        ended (seconds or timedelta); default: the completion-time history's p95 ×
        ``overdue_factor``, and no expectation without history. As for :class:`BatchSensor`.
    :param overdue_factor: multiplies the history's p95 when ``expected_within`` is not given.
    :param on_overdue: called once per resubmitted attempt when one of its batches runs past its
        expected end, deferred or waited for in the worker: an Airflow notifier or a callable
        taking the context, which holds ``batch_overdue`` (``message``, ``overdue`` per batch, the
        attempt's ``progress`` with ``eta_seconds``). The wait goes on; the report is noted in the
        run folder (``attempt-N/overdue.json``) so a new try of the task does not repeat it.
    :param sync_fallback_at: when set, and the first wait passed its deadline, the rows it cut off
        are first sent to the provider's synchronous API (see ``docs/deadlines.md``); the rows
        still without an answer then go to the dead letter.
    :param sync_concurrency: synchronous calls in flight at most during the fallback.
    :param sync_tokens_per_minute: estimated tokens sent per minute at most during the fallback.
    :param max_cost_usd: the fallback starts only if what the run paid plus its ceiling fits.
    :param results_asset: Asset emitted with the final results.
    :param conn_id: use this connection instead of the one recorded in the handle.
    :param run_path, cache_path, use_cache, cache_ttl: the result cache successes are stored in;
        the same values as the submit task's (see :class:`SubmitBatchOperator`).
    :param keep_raw: keep each answer's raw provider body in the results (``raw``); off by
        default, so an answer is stored once, in its fields.
    :param results_format: ``"jsonl"`` (default, ``results.jsonl``) or ``"parquet"``
        (``results.parquet``: typed columns, embeddings as fixed-size float32 lists; needs the
        ``parquet`` extra).
    """

    template_fields: Sequence[str] = ("handle", "max_attempts", "run_path", "cache_path")
    ui_color = "#f7e4d4"
    operator_extra_links = batch_links()

    def __init__(
        self,
        *,
        handle: Any = None,
        max_attempts: int | str = 3,
        fail_on_dead_letter: bool = False,
        deferrable: bool = True,
        attempt_timeout: timedelta | float = timedelta(hours=25),
        poll_interval: float = DEFAULT_POLL_INTERVAL_MIN,
        max_poll_interval: float = DEFAULT_POLL_INTERVAL_MAX,
        cancel_on_timeout: bool = True,
        cancel_on_kill: bool = False,
        timeout_grace: timedelta | float | None = DEFAULT_TIMEOUT_GRACE,
        on_timeout: OnTimeout | str = DEFAULT_ON_TIMEOUT,
        expected_within: timedelta | float | None = None,
        overdue_factor: float = DEFAULT_OVERDUE_FACTOR,
        on_overdue: Callable[..., Any] | None = None,
        sync_fallback_at: Any = None,
        sync_concurrency: int = 8,
        sync_tokens_per_minute: int | None = None,
        max_cost_usd: float | None = None,
        results_asset: Asset | None = None,
        metadata: Mapping[str, str] | None = None,
        provider: str | None = None,
        conn_id: str | None = None,
        run_path: str | ObjectStoragePath | None = None,
        cache_path: str | ObjectStoragePath | None = None,
        use_cache: bool = True,
        cache_ttl: timedelta | float | None = None,
        keep_raw: bool = False,
        results_format: str = "jsonl",
        **kwargs: Any,
    ):
        super().__init__(outlets=outlets_with(results_asset, kwargs.pop("outlets", None)), **kwargs)
        if isinstance(max_attempts, int) and max_attempts < 1:
            raise ValueError("max_attempts counts the first submission too: it must be at least 1")
        self.handle = handle
        self.max_attempts = max_attempts
        self.fail_on_dead_letter = fail_on_dead_letter
        self.deferrable = deferrable
        self.attempt_timeout = attempt_timeout
        self.poll_interval = poll_interval
        self.max_poll_interval = max_poll_interval
        self.cancel_on_timeout = cancel_on_timeout
        self.cancel_on_kill = cancel_on_kill
        self.timeout_grace = timeout_grace
        self.on_timeout = check_on_timeout(on_timeout)
        self.expected_within = expected_within
        if overdue_factor <= 0:
            raise ValueError(f"overdue_factor must be > 0, got {overdue_factor!r}")
        self.overdue_factor = overdue_factor
        self.on_overdue = on_overdue
        self._overdue_reported: set[int] = set()
        self.sync_fallback_at = check_sync_fallback_at(sync_fallback_at)
        self.sync_concurrency = sync_concurrency
        self.sync_tokens_per_minute = sync_tokens_per_minute
        self.max_cost_usd = max_cost_usd
        self._synced_attempts: set[int] = set()
        self.metadata = metadata
        self._set_run_options(
            provider=provider,
            conn_id=conn_id,
            run_path=run_path,
            cache_path=cache_path,
            use_cache=use_cache,
            cache_ttl=cache_ttl,
        )
        self._set_result_options(keep_raw=keep_raw, results_format=results_format)
        self._watching: RunHandle | None = None

    def _latest_handle(self, context: Any) -> RunHandle:
        value = self.handle
        if value is None:
            upstream = sorted(self.upstream_task_ids)
            if len(upstream) == 1:
                value = pull_upstream(self, context, upstream[0])
        if isinstance(value, dict) and isinstance(value.get("handle"), dict):
            value = value["handle"]  # the collect task's summary carries the handle it collected
        return upstream_handle(self, context, value)

    def execute(self, context: Any) -> dict[str, Any]:
        handle = self._latest_handle(context)
        persist_batch_links(context, handle.provider, [], None)  # slots filled when batches exist
        if self.sync_fallback_at is not None and handle.attempt == 1:
            report = fallback_step(self, self._hook(handle.provider.value, handle.conn_id), handle)
            if fell_back(report):
                self._synced_attempts.add(handle.attempt)
        return self._next_round(context, handle)

    def _next_round(self, context: Any, handle: RunHandle) -> dict[str, Any]:
        while True:
            hook = self._hook(handle.provider.value, handle.conn_id)
            run_dir = run_dir_of(handle)
            ledger = Ledger.load(run_dir)
            if ledger is None:
                raise AirflowException(f"{run_dir} has no ledger: was the submit task run?")

            new = run_sync(self._resubmit(hook, handle, ledger, metric_tags(context)))
            if new is None:
                return self._finish(context, handle)
            self.log.info(
                "Attempt %d: %d request(s) resubmitted in %d batch(es)",
                new.attempt,
                new.counts.submitted,
                len(new.batches),
            )
            persist_batch_links(context, new.provider, new.batch_ids, hook.get_base_url())
            if not new.batches:
                handle = new
                continue
            if self.deferrable:
                expect = wait_expectation(self, new)
                if expect.usual or expect.expected_by:
                    self.log.info(
                        "Attempt %d%s%s",
                        new.attempt,
                        f": {expect.usual}" if expect.usual else "",
                        f"; overdue after {min(expect.expected_by.values())}" if expect.expected_by else "",
                    )
                defer_until_ended(
                    self,
                    hook,
                    new,
                    timeout=self.attempt_timeout,
                    method_name="resume",
                    kwargs={"handle": new.model_dump(mode="json")},
                    expected_by=expect.expected_by,
                    usual=expect.usual,
                )
            states = self._wait_in_worker(hook, new, context)
            record_waits(new.provider.value, {"states": states}, metric_tags(context))
            self._collect(hook, new)
            handle = new

    async def _resubmit(
        self, hook: LLMBatchHook, handle: RunHandle, ledger: Ledger, metric_labels: dict[str, str]
    ) -> RunHandle | None:
        async with hook.get_backend() as backend:
            return await resubmit_retryable(
                backend,
                handle,
                run_dir_of(handle),
                run_key=ledger.run_key,
                tags={str(k): str(v) for k, v in (self.metadata or {}).items()},
                max_attempts=int(self.max_attempts),
                on_created=metrics.batch_created_counter(metric_labels),
                resubmit_after_deadline=self.on_timeout == "retry"
                and handle.attempt not in self._synced_attempts,
            )

    def _wait_in_worker(
        self, hook: LLMBatchHook, handle: RunHandle, context: Any
    ) -> dict[str, dict[str, Any]]:
        """Wait for the attempt's batches; their final states as a trigger event carries them.

        Past ``attempt_timeout`` the batches are cancelled (``cancel_on_timeout``) and waited for,
        for at most ``timeout_grace``; the deadline is noted in the run folder. A batch still
        running past its expected end is reported once (:func:`report_overdue`, run in a thread
        so a notifier may block or run its own event loop) while the watch goes on."""
        self._watching = handle
        deadline = deadline_after(self.attempt_timeout)
        expect = wait_expectation(self, handle)
        if expect.usual:
            self.log.info("Attempt %d: %s", handle.attempt, expect.usual)

        async def tell(event: dict[str, Any]) -> None:
            await asyncio.to_thread(
                report_overdue, self, context, handle, event, self.on_overdue, reported=self._overdue_reported
            )

        async def wait() -> Any:
            async with hook.get_backend() as backend:
                return await watch_to_end(
                    backend,
                    handle.batch_ids,
                    deadline=datetime.fromisoformat(deadline) if deadline else None,
                    grace_seconds=seconds_of(self.timeout_grace),
                    cancel_at_deadline=self.cancel_on_timeout,
                    poll_interval_min=self.poll_interval,
                    poll_interval_max=self.max_poll_interval,
                    on_progress=lambda p: self.log.info("%s", p.line()),
                    log=self.log,
                    expected_by=expected_times(expect.expected_by, handle.batch_ids),
                    on_overdue=tell,
                )

        outcome = run_sync(wait())
        self._watching = None
        if outcome.deadline_passed:
            record = DeadlineRecord(
                attempt=handle.attempt,
                deadline=deadline or datetime.now(UTC).isoformat(),
                cancelled=outcome.cancelled,
                still_running=outcome.still_running,
            )
            note_deadline(self.log, handle, record)
            if outcome.still_running:
                self._still_running(handle, outcome.still_running)
        return {k: v.model_dump(mode="json") for k, v in outcome.states.items()}

    def _still_running(self, handle: RunHandle, running: list[str]) -> None:
        """Fail this try, so the task's retries re-attach to the attempt and collect it once its
        batches end: closing the run now would leave what they answered uncollected."""
        raise AirflowException(
            f"attempt {handle.attempt}: {len(running)} batch(es) had not ended {self.timeout_grace} "
            f"after the deadline ({', '.join(running[:5])}); the task's next try waits for them again"
        )

    def _collect(self, hook: LLMBatchHook, handle: RunHandle) -> RunSummary:
        cache = self._cache(handle)

        async def collect() -> RunSummary:
            async with hook.get_backend() as backend:
                return await collect_run(
                    backend,
                    handle,
                    run_dir_of(handle),
                    cache=cache,
                    keep_raw=self.keep_raw,
                    results_format=self.results_format,
                )

        summary = run_sync(collect())
        self.log.info(
            "Attempt %d collected: %d succeeded, %d unresolved (%s) of %d inputs",
            handle.attempt,
            summary.succeeded,
            summary.unresolved,
            summary.unresolved_by_status,
            summary.inputs,
        )
        log_cost(self.log, summary)
        warn_cache_gaps(self.log, summary)
        return summary

    def resume(
        self, context: Any, event: dict[str, Any], handle: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        current = RunHandle.model_validate(handle) if handle else self._ledger_handle(context)
        hook = self._hook(current.provider.value, current.conn_id)
        status = event.get("status")
        if status == "overdue":
            handle_overdue(
                self,
                context,
                current,
                event,
                self.on_overdue,
                method_name="resume",
                kwargs={"handle": current.model_dump(mode="json")},
            )
        if status in ("deadline", "timeout"):
            note_deadline(self.log, current, record_from_event(current.attempt, event))
            if status == "timeout":
                self._still_running(current, list(event.get("pending") or []))
        elif status != "success":
            raise AirflowException(f"waiting for attempt {current.attempt} failed: {event.get('message')}")
        record_waits(current.provider.value, event, metric_tags(context))
        self._collect(hook, current)
        return self._next_round(context, current)

    def _ledger_handle(self, context: Any) -> RunHandle:
        """The latest attempt's handle, rebuilt from the ledger (when the deferral's kwargs are
        not handed back, as in ``dag.test()``)."""
        first = self._latest_handle(context)
        run_dir = run_dir_of(first)
        ledger = Ledger.load(run_dir)
        if ledger is None:
            raise AirflowException(f"{run_dir} has no ledger: was the submit task run?")
        return handle_for(
            ledger, run_dir, attempt=max(ledger.attempts), conn_id=first.conn_id, cache_path=first.cache_path
        )

    def _finish(self, context: Any, handle: RunHandle) -> dict[str, Any]:
        hook = self._hook(handle.provider.value, handle.conn_id)
        backend = hook.get_backend()
        try:
            summary = write_dead_letter(backend, run_dir_of(handle), max_attempts=int(self.max_attempts))
        finally:
            run_sync(backend.aclose())
        metrics.run_finished(summary, metric_tags(context))
        self.log.info(
            "Run final after %d attempt(s): %d succeeded, %d in dead letter, %d rejected of %d inputs",
            summary.attempts,
            summary.succeeded,
            summary.dead_letter,
            summary.rejected,
            summary.inputs,
        )
        log_cost(self.log, summary)
        dead_letter_file = summary.files.get("dead_letter", summary.run_path + "/dead_letter.jsonl")
        if summary.deadline_passed:
            cut = summary.dead_letter_after_deadline
            self.log.warning(
                "A wait passed its deadline (attempt(s) %s): %s; on_timeout=%r",
                ", ".join(map(str, summary.deadline_passed)),
                f"{cut} row(s) cut off are in {dead_letter_file}" if cut else "every row was answered",
                self.on_timeout,
            )
            if cut and self.on_timeout == "fail":
                raise AirflowFailException(
                    f"{cut} row(s) were cut off by a passed deadline (on_timeout='fail'); "
                    f"the {summary.succeeded} answered are in {summary.files.get('results')}, "
                    f"the rest in {dead_letter_file}"
                )
        if summary.dead_letter and self.fail_on_dead_letter:
            raise AirflowFailException(
                f"{summary.dead_letter} item(s) still failed after {summary.attempts} attempt(s); "
                f"see {dead_letter_file}"
            )
        _publish(context, self.outlets, summary)
        return summary.for_xcom()

    def on_kill(self) -> None:
        if self.cancel_on_kill and self._watching is not None:
            handle = self._watching
            _cancel(self._hook(handle.provider.value, handle.conn_id), handle.batch_ids, self.log)
