"""Collect: download a run's results into its run directory; the results Asset and the cost line.

Invariant: XCom carries only summaries (paths, ids, counts) and the run handle: never request or
result data, never a key.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import Asset, BaseOperator, ObjectStoragePath
from airflow.sdk.exceptions import AirflowException

from batch_provider.core.collection import RunSummary, collect_run
from batch_provider.core.handle import RunHandle
from batch_provider.core.rundir import safe_segment
from batch_provider.core.watch import (
    DEFAULT_POLL_INTERVAL_MAX,
    DEFAULT_POLL_INTERVAL_MIN,
    WatchTimeout,
    poll_round,
    watch_batches,
)
from batch_provider.hooks.batch import LLMBatchHook
from batch_provider.operators._common import (
    _BatchOperatorMixin,
    deadline_after,
    default_run_path,
    defer_until_ended,
    outlets_with,
    run_dir_of,
    run_sync,
    seconds_of,
    upstream_handle,
)

DEFAULT_COLLECT_WAIT = timedelta(hours=1)
"""How long collect waits, deferred, for batches that have not ended yet (e.g. still
``cancelling`` after a user stopped the wait) before failing for its retries to try again."""


def results_asset(dag_id: str, group: str, run_path: str | None = None) -> Asset:
    """The Asset a run's results are published as: one per (DAG, task group), under the run path.

    Each run's files live in a sub-folder per run id; the asset event's ``extra`` names them.
    The name is derived from the URI too: Airflow keeps one active asset per name, so a DAG whose
    run path moves gets a new asset instead of one that clashes with the old location's.
    """
    base = str(run_path or default_run_path()).rstrip("/")
    scheme, sep, rest = base.partition("://")
    if sep and "@" in rest.split("/", 1)[0]:
        rest = rest.split("@", 1)[1]  # drop the conn_id: it is not part of the data's identity
    uri = f"{scheme}{sep}{rest}/{safe_segment(dag_id)}/{safe_segment(group)}"
    location = hashlib.sha256(uri.encode()).hexdigest()[:8]
    name = f"llm_batch_results__{safe_segment(dag_id)}__{safe_segment(group)}__{location}"
    return Asset(uri=uri, name=name)


def _publish(context: Any, outlets: Sequence[Any], summary: RunSummary) -> None:
    """Attach the run's file locations and counts to this task's asset events."""
    extra = {
        "run_path": summary.run_path,
        "results": summary.files.get("results", f"{summary.run_path}/results.jsonl"),
        "succeeded": summary.succeeded,
        "unresolved": summary.unresolved,
        "dead_letter": summary.dead_letter,
        "inputs": summary.inputs,
    }
    events = context.get("outlet_events")
    if events is None:
        return
    for outlet in outlets:
        if isinstance(outlet, Asset):
            events[outlet].extra = extra


def log_cost(log: Any, summary: RunSummary) -> None:
    """One line with the run's tokens and dollars; unpriced models and cache hits when there are any."""
    cost = summary.cost
    line = "%d input / %d output tokens, $%.4f at batch prices (synchronous $%.4f, saved $%.4f)"
    args: list[Any] = [
        summary.usage.input_tokens,
        summary.usage.output_tokens,
        cost.batch_usd,
        cost.standard_usd,
        cost.savings_usd,
    ]
    if cost.unpriced_models or cost.unpriced_tokens:
        line += "; %d tokens of unpriced models not counted: %s"
        args += [cost.unpriced_tokens, ", ".join(cost.unpriced_models) or "?"]
    if summary.cached > 0:
        line += "; %d answered from the cache, saving $%.4f"
        args += [summary.cached, summary.cache_savings_usd]
    log.info(line, *args)


def warn_cache_gaps(log: Any, summary: RunSummary) -> None:
    """A warning when some successes could not be stored in the result cache (an optional part:
    the run goes on; those rows are simply paid again if a later run sends them)."""
    if summary.cache_entries_not_stored:
        log.warning(
            "%d result(s) could not be stored in the result cache after retries; the results files "
            "are complete, a later run will pay for those rows again (manifest: cache_entries_not_stored)",
            summary.cache_entries_not_stored,
        )


class CollectBatchOperator(_BatchOperatorMixin, BaseOperator):
    """Download the results of every batch of a run into its run directory.

    Writes ``results.jsonl`` (successes), ``errors.jsonl`` (per-item errors, expired and cancelled
    items, each marked retryable or not) and ``manifest.json``. Partial results of expired or
    cancelled batches are kept. Returns ``RunSummary.for_xcom()`` plus the ``handle``.

    :param handle: the submit task's handle; default the only upstream task's return value.
    :param results_asset: an Asset to emit when the results are written, with the run's paths
        and counts in the event's ``extra``.
    :param conn_id: use this connection instead of the one recorded in the handle.
    :param run_path, cache_path, use_cache, cache_ttl: the result cache successes are stored in;
        the same values as the submit task's (see :class:`SubmitBatchOperator`).
    :param wait_timeout: how long to wait for batches not ended yet (default 1 h).
    :param keep_raw: keep each answer's raw provider body in the results (``raw``); off by
        default, so an answer is stored once, in its fields.
    :param results_format: ``"jsonl"`` (default, ``results.jsonl``) or ``"parquet"``
        (``results.parquet``: typed columns, embeddings as fixed-size float32 lists; needs the
        ``parquet`` extra).
    :param deferrable: wait for them in the triggerer (default) rather than in the worker.
    """

    template_fields: Sequence[str] = ("handle", "run_path", "cache_path")
    ui_color = "#e0f0d9"
    cancel_on_kill = False

    def __init__(
        self,
        *,
        handle: Any = None,
        results_asset: Asset | None = None,
        provider: str | None = None,
        conn_id: str | None = None,
        run_path: str | ObjectStoragePath | None = None,
        cache_path: str | ObjectStoragePath | None = None,
        use_cache: bool = True,
        cache_ttl: timedelta | float | None = None,
        keep_raw: bool = False,
        results_format: str = "jsonl",
        wait_timeout: timedelta | float = DEFAULT_COLLECT_WAIT,
        deferrable: bool = True,
        poll_interval: float = DEFAULT_POLL_INTERVAL_MIN,
        max_poll_interval: float = DEFAULT_POLL_INTERVAL_MAX,
        **kwargs: Any,
    ):
        super().__init__(outlets=outlets_with(results_asset, kwargs.pop("outlets", None)), **kwargs)
        self.handle = handle
        self.wait_timeout = wait_timeout
        self.deferrable = deferrable
        self.poll_interval = poll_interval
        self.max_poll_interval = max_poll_interval
        self._set_run_options(
            provider=provider,
            conn_id=conn_id,
            run_path=run_path,
            cache_path=cache_path,
            use_cache=use_cache,
            cache_ttl=cache_ttl,
        )
        self._set_result_options(keep_raw=keep_raw, results_format=results_format)

    def execute(self, context: Any) -> dict[str, Any]:
        handle = upstream_handle(self, context, self.handle)
        hook = self._hook(handle.provider.value, handle.conn_id)
        running = self._not_ended(hook, handle)
        if running:
            self.log.warning(
                "%d batch(es) have not ended yet (%s): waiting up to %ss for them before collecting",
                len(running),
                ", ".join(running[:5]),
                seconds_of(self.wait_timeout),
            )
            if self.deferrable:
                defer_until_ended(
                    self, hook, handle, timeout=self.wait_timeout, method_name="execute_complete"
                )
            self._wait_in_worker(hook, handle)
        return self._collect(context, handle, hook)

    def execute_complete(self, context: Any, event: dict[str, Any]) -> dict[str, Any]:
        handle = upstream_handle(self, context, self.handle)
        if event.get("status") != "success":
            raise AirflowException(
                f"the batches did not end within wait_timeout ({event.get('message')}); "
                "the task's retries collect them later"
            )
        return self._collect(context, handle, self._hook(handle.provider.value, handle.conn_id))

    @staticmethod
    def _not_ended(hook: LLMBatchHook, handle: RunHandle) -> list[str]:
        """The batches of ``handle`` not (known to be) ended; a poll that failed counts as not ended."""

        async def check() -> list[str]:
            async with hook.get_backend() as backend:
                states, _ = await poll_round(backend, handle.batch_ids)
            return [b for b in handle.batch_ids if b not in states or not states[b].is_terminal]

        return run_sync(check()) if handle.batches else []

    def _wait_in_worker(self, hook: LLMBatchHook, handle: RunHandle) -> None:
        deadline = deadline_after(self.wait_timeout)

        async def wait() -> None:
            async with hook.get_backend() as backend:
                await watch_batches(
                    backend,
                    handle.batch_ids,
                    deadline=datetime.fromisoformat(deadline) if deadline else None,
                    poll_interval_min=self.poll_interval,
                    poll_interval_max=self.max_poll_interval,
                )

        try:
            run_sync(wait())
        except WatchTimeout as exc:
            raise AirflowException(f"{exc}; the task's retries collect them later") from exc

    def _collect(self, context: Any, handle: RunHandle, hook: LLMBatchHook) -> dict[str, Any]:
        run_dir = run_dir_of(handle)
        cache = self._cache(handle)

        async def collect() -> RunSummary:
            async with hook.get_backend() as backend:
                return await collect_run(
                    backend,
                    handle,
                    run_dir,
                    cache=cache,
                    keep_raw=self.keep_raw,
                    results_format=self.results_format,
                )

        summary = run_sync(collect())
        self.log.info(
            "Attempt %d collected: %d succeeded, %d unresolved (%s), %d rejected of %d inputs; files in %s",
            handle.attempt,
            summary.succeeded,
            summary.unresolved,
            summary.unresolved_by_status,
            summary.rejected,
            summary.inputs,
            summary.run_path,
        )
        log_cost(self.log, summary)
        warn_cache_gaps(self.log, summary)
        _publish(context, self.outlets, summary)
        return {**summary.for_xcom(), "handle": handle.model_dump(mode="json")}
