"""A TaskGroup factory for the usual run: submit >> wait >> collect >> retry.

Each step is its own task, so the UI shows where a run is (submitting, waiting in the triggerer,
collecting, retrying) and a failed step can be cleared alone; the run directory and the ledger
make every step safe to re-run.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from airflow.sdk import Asset, TaskGroup

from batch_provider.core.watch import DEFAULT_POLL_INTERVAL_MAX, DEFAULT_POLL_INTERVAL_MIN
from batch_provider.operators.batch import CollectBatchOperator, RetryBatchOperator, SubmitBatchOperator
from batch_provider.sensors.batch import DEFAULT_TIMEOUT, BatchSensor


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
    **submit_kwargs: Any,
) -> TaskGroup:
    """Build the group ``group_id`` with tasks ``submit``, ``wait``, ``collect`` and ``retry``.

    ``submit_kwargs`` go to :class:`SubmitBatchOperator` (``input_path``/``records``/
    ``requests_path``, ``prompt_template``, ``model``, ``max_tokens``, ``response_schema`` …).
    ``results_asset`` is emitted by the last task (``retry``) once the results are final.
    ``submit_retries``: Airflow retries of the submit task, which re-attach to batches already
    created rather than paying twice.
    """
    with TaskGroup(group_id, tooltip=tooltip or f"LLM batch run ({provider or 'from connection'})") as group:
        submit = SubmitBatchOperator(
            task_id="submit",
            provider=provider,
            conn_id=conn_id,
            metadata=metadata,
            retries=submit_retries,
            retry_delay=timedelta(seconds=10),
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
        )
        collect = CollectBatchOperator(task_id="collect", handle=submit.output)
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
            results_asset=results_asset,
            metadata=metadata,
        )
        submit >> wait >> collect >> retry
    return group
