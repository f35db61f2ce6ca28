"""The batch operators mapped with ``.partial().expand()``: one run per input file, each map index
with its own handle, run folder, retry and final manifest."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from airflow.sdk import DAG

from batch_provider.operators import CollectBatchOperator, RetryBatchOperator, SubmitBatchOperator
from batch_provider.sensors import BatchSensor

FEEDBACK = Path(__file__).resolve().parents[2] / "dags" / "data" / "feedback"
FILES = sorted(str(p) for p in FEEDBACK.glob("*.jsonl"))

with DAG(dag_id="mapped_operators", schedule=None, start_date=datetime(2026, 1, 1), catchup=False) as dag:
    submit = SubmitBatchOperator.partial(
        task_id="submit",
        provider="openai",
        prompt_template="{{ store }}: {{ text }}",
        model="gpt-4o-mini",
        max_tokens=64,
    ).expand(input_path=FILES)
    wait = BatchSensor.partial(task_id="wait", poll_interval=0.2, max_poll_interval=0.5).expand(
        handle=submit.output
    )
    collect = CollectBatchOperator.partial(task_id="collect").expand(handle=submit.output)
    retry = RetryBatchOperator.partial(
        task_id="retry", max_attempts=3, poll_interval=0.2, max_poll_interval=0.5
    ).expand(handle=collect.output)
    wait >> collect
