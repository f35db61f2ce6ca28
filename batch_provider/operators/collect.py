"""Collect: download a run's results into its run directory; the results Asset and the cost line.

Invariant: XCom carries only summaries (paths, ids, counts) and the run handle: never request or
result data, never a key.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from airflow.sdk import Asset, BaseOperator, ObjectStoragePath

from batch_provider.core.collection import RunSummary, collect_run
from batch_provider.core.rundir import safe_segment
from batch_provider.operators._common import (
    _BatchOperatorMixin,
    default_run_path,
    outlets_with,
    run_dir_of,
    run_sync,
    upstream_handle,
)


def results_asset(dag_id: str, group: str, run_path: str | None = None) -> Asset:
    """The Asset a run's results are published as: one per (DAG, task group), under the run path.

    Each run's files live in a sub-folder per run id; the asset event's ``extra`` names them.
    """
    base = str(run_path or default_run_path()).rstrip("/")
    scheme, sep, rest = base.partition("://")
    if sep and "@" in rest.split("/", 1)[0]:
        rest = rest.split("@", 1)[1]  # drop the conn_id: it is not part of the data's identity
    uri = f"{scheme}{sep}{rest}/{safe_segment(dag_id)}/{safe_segment(group)}"
    return Asset(uri=uri, name=f"llm_batch_results__{safe_segment(dag_id)}__{safe_segment(group)}")


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
    """

    template_fields: Sequence[str] = ("handle", "run_path", "cache_path")
    ui_color = "#e0f0d9"

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
        **kwargs: Any,
    ):
        super().__init__(outlets=outlets_with(results_asset, kwargs.pop("outlets", None)), **kwargs)
        self.handle = handle
        self._set_run_options(
            provider=provider,
            conn_id=conn_id,
            run_path=run_path,
            cache_path=cache_path,
            use_cache=use_cache,
            cache_ttl=cache_ttl,
        )

    def execute(self, context: Any) -> dict[str, Any]:
        handle = upstream_handle(self, context, self.handle)
        hook = self._hook(handle.provider.value, handle.conn_id)
        run_dir = run_dir_of(handle)
        cache = self._cache(handle)

        async def collect() -> RunSummary:
            async with hook.get_backend() as backend:
                return await collect_run(backend, handle, run_dir, cache=cache)

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
        _publish(context, self.outlets, summary)
        return {**summary.for_xcom(), "handle": handle.model_dump(mode="json")}
