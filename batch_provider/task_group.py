"""A TaskGroup factory for the usual run: submit >> wait >> collect >> retry.

Each step is its own task, so the UI shows where a run is (submitting, waiting in the triggerer,
collecting, retrying) and a failed step can be cleared alone; the run directory and the ledger
make every step safe to re-run.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any

from airflow.sdk import Asset, TaskGroup, TriggerRule

from batch_provider.core.deadline import DEFAULT_ON_TIMEOUT
from batch_provider.core.watch import DEFAULT_POLL_INTERVAL_MAX, DEFAULT_POLL_INTERVAL_MIN
from batch_provider.operators._overdue import DEFAULT_OVERDUE_FACTOR
from batch_provider.operators.collect import CollectBatchOperator
from batch_provider.operators.retry import RetryBatchOperator
from batch_provider.operators.submit import SubmitBatchOperator
from batch_provider.sensors.batch import DEFAULT_TIMEOUT, DEFAULT_TIMEOUT_GRACE, BatchSensor

TASK_DOCS: dict[str, str] = {
    "submit": "Renders the input rows into requests and submits them as provider batches "
    "(rows answered before come from the result cache; bad rows go to rejects.jsonl).",
    "wait": "Waits, in the triggerer, until every batch of the run has ended.",
    "collect": "Downloads the batches' results into the run folder (results, errors, manifest) "
    "and stores the successes in the result cache.",
    "retry": "Resubmits retryable failures until they succeed or attempts run out, then writes "
    "the dead letter file and the final manifest.",
}
"""One sentence per task of the group, shown as the task's doc in the UI; see ``task_docs``."""


def llm_batch_group(
    group_id: str,
    *,
    provider: str | None = None,
    conn_id: str | None = None,
    max_attempts: int | str = 3,
    fail_on_dead_letter: bool = False,
    timeout: timedelta | float = DEFAULT_TIMEOUT,
    poll_interval: float = DEFAULT_POLL_INTERVAL_MIN,
    max_poll_interval: float = DEFAULT_POLL_INTERVAL_MAX,
    deferrable: bool = True,
    cancel_on_timeout: bool = True,
    cancel_on_kill: bool = False,
    results_asset: Asset | None = None,
    metadata: Mapping[str, str] | None = None,
    submit_retries: int = 2,
    tooltip: str | None = None,
    max_cost_usd: float | None = None,
    cache_path: str | None = None,
    use_cache: bool = True,
    cache_ttl: timedelta | float | None = None,
    task_docs: Mapping[str, str] | None = None,
    submit_operator_class: type[SubmitBatchOperator] = SubmitBatchOperator,
    timeout_grace: timedelta | float = DEFAULT_TIMEOUT_GRACE,
    on_timeout: str = DEFAULT_ON_TIMEOUT,
    collect_retries: int = 3,
    collect_retry_delay: timedelta = timedelta(seconds=30),
    keep_raw: bool = False,
    results_format: str = "jsonl",
    sync_fallback_at: Any = None,
    sync_concurrency: int = 8,
    sync_tokens_per_minute: int | None = None,
    expected_within: timedelta | float | None = None,
    overdue_factor: float = DEFAULT_OVERDUE_FACTOR,
    on_overdue: Callable[..., Any] | None = None,
    **submit_kwargs: Any,
) -> TaskGroup:
    """Build the group ``group_id`` with tasks ``submit``, ``wait``, ``collect`` and ``retry``.

    ``submit_kwargs`` go to :class:`SubmitBatchOperator` (``input_path``/``records``/
    ``requests_path``, ``prompt_template``, ``model``, ``max_tokens``, ``output_type``,
    ``retry_invalid_output``, ``model_column`` …).
    ``results_asset`` is emitted by the last task (``retry``) once the results are final.
    ``submit_retries``: Airflow retries of the submit task, which re-attach to batches already
    created rather than paying twice.
    ``max_cost_usd``: the submit task fails, creating no batch, when the estimate is over it.
    ``cache_path`` / ``use_cache`` / ``cache_ttl``: the result cache (default
    ``<run_path>/_cache``), given to submit, collect and retry alike so hits are served and
    successes stored in the same place.
    ``max_rejected_fraction``, ``on_empty``, ``render_missing_as_empty``, ``cache_system_prompt``
    and the other submit options also go through ``submit_kwargs`` (see the operator); with
    ``on_empty="skip"`` (the default) an input without rows skips all four tasks.
    ``task_docs``: ``doc_md`` per task id (``submit``, ``wait``, ``collect``, ``retry``),
    replacing the defaults in :data:`TASK_DOCS`.
    ``submit_operator_class``: the submit task's class, a :class:`SubmitBatchOperator` subclass
    (``@task.batch_llm`` passes one that takes its rows from the decorated function).

    Inside a mapped task group (``@task_group`` ... ``.expand(input_path=[...])``) every map index
    is a run of its own: its own run folder (``<group>.map-N``), batches, retries and final
    manifest; ``wait``, ``collect`` and ``retry`` use the handle of their own map index.

    ``timeout`` is an ending, not a crash: past it the batches are cancelled
    (``cancel_on_timeout``), waited for until they report an ending (at most ``timeout_grace``),
    collected, and ``on_timeout`` decides the rest: ``"partial"`` (default: rows cut off go to the
    dead letter, the run succeeds with a warning), ``"fail"`` (same files, the retry task fails),
    ``"retry"`` (they are resubmitted, as after a provider-side expiry).
    ``sync_fallback_at``: a time of day in the DAG's timezone (``"07:00"``) or a duration after
    submit (``timedelta``): batches still running then are cancelled, what they answered is kept,
    and the rows left are sent to the provider's synchronous API (``sync_concurrency`` calls at a
    time, ``sync_tokens_per_minute`` at most) at full price, within ``max_cost_usd``.
    ``collect_retries`` / ``collect_retry_delay``: Airflow retries of collect and retry, with an
    exponential backoff, for transient storage and provider errors (both are safe to re-run).
    ``keep_raw`` / ``results_format``: given to collect and retry; keep each answer's raw provider
    body (off by default: an answer is stored once), write ``results.jsonl`` (default) or
    ``results.parquet`` (typed columns; needs the ``parquet`` extra).
    Collect runs whenever submit succeeded, also after the wait failed or was stopped by a user,
    so what the batches answered is never left uncollected.
    ``expected_within`` / ``overdue_factor`` / ``on_overdue``: when the wait, and the retry task
    for each attempt it resubmits, reports a batch overdue (still running past
    ``expected_within``, or the completion-time history's p95 × ``overdue_factor``) and whom it
    tells, once per attempt, deferrable or not; see :class:`BatchSensor`.
    """
    docs = {**TASK_DOCS, **(task_docs or {})}
    cache = {
        "run_path": submit_kwargs.pop("run_path", None),
        "cache_path": cache_path,
        "use_cache": use_cache,
        "cache_ttl": cache_ttl,
    }
    result_options = {"keep_raw": keep_raw, "results_format": results_format}
    with TaskGroup(group_id, tooltip=tooltip or f"LLM batch run ({provider or 'from connection'})") as group:
        submit = submit_operator_class(
            task_id="submit",
            provider=provider,
            conn_id=conn_id,
            metadata=metadata,
            retries=submit_retries,
            retry_delay=timedelta(seconds=10),
            max_cost_usd=max_cost_usd,
            doc_md=docs["submit"],
            **cache,
            **submit_kwargs,
        )
        wait = BatchSensor(
            task_id="wait",
            handle=submit.output,
            deferrable=deferrable,
            timeout=timeout,
            poll_interval=poll_interval,
            max_poll_interval=max_poll_interval,
            cancel_on_timeout=cancel_on_timeout,
            cancel_on_kill=cancel_on_kill,
            timeout_grace=timeout_grace,
            sync_fallback_at=sync_fallback_at,
            expected_within=expected_within,
            overdue_factor=overdue_factor,
            on_overdue=on_overdue,
            doc_md=docs["wait"],
        )
        resilient = {
            "retries": collect_retries,
            "retry_delay": collect_retry_delay,
            "retry_exponential_backoff": True,
            "max_retry_delay": timedelta(minutes=30),
        }
        collect = CollectBatchOperator(
            task_id="collect",
            handle=submit.output,
            doc_md=docs["collect"],
            trigger_rule=_collect_trigger_rule(group),
            wait_timeout=timeout,
            deferrable=deferrable,
            poll_interval=poll_interval,
            max_poll_interval=max_poll_interval,
            **resilient,
            **cache,
            **result_options,
        )
        retry = RetryBatchOperator(
            task_id="retry",
            max_attempts=max_attempts,
            fail_on_dead_letter=fail_on_dead_letter,
            deferrable=deferrable,
            attempt_timeout=timeout,
            poll_interval=poll_interval,
            max_poll_interval=max_poll_interval,
            cancel_on_timeout=cancel_on_timeout,
            cancel_on_kill=cancel_on_kill,
            timeout_grace=timeout_grace,
            on_timeout=on_timeout,
            expected_within=expected_within,
            overdue_factor=overdue_factor,
            on_overdue=on_overdue,
            sync_fallback_at=sync_fallback_at,
            sync_concurrency=sync_concurrency,
            sync_tokens_per_minute=sync_tokens_per_minute,
            max_cost_usd=max_cost_usd,
            results_asset=results_asset,
            metadata=metadata,
            doc_md=docs["retry"],
            **resilient,
            **cache,
            **result_options,
        )
        submit >> wait >> collect >> retry
    return group


def _collect_trigger_rule(group: TaskGroup) -> TriggerRule:
    """Collect runs after a failed wait too, so nothing answered is left uncollected; inside a
    mapped task group it runs after a successful wait only, because Airflow 3.3 evaluates
    ``all_done_min_one_success`` there before expanding the task and marks it upstream_failed
    (a failed wait's map index is then collected by clearing its collect task)."""
    if next(group.iter_mapped_task_groups(), None) is not None:
        return TriggerRule.ALL_SUCCESS
    return TriggerRule.ALL_DONE_MIN_ONE_SUCCESS
