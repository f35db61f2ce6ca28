"""Test DAGs whose first attempt meets emulator faults (``emu_faults`` batch metadata): the
retry task's batches carry no fault tag, so they run clean."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from airflow.sdk import DAG

from batch_provider.operators import CollectBatchOperator, RetryBatchOperator, SubmitBatchOperator
from batch_provider.sensors import BatchSensor

TICKETS = Path(__file__).resolve().parents[2] / "dags" / "data" / "tickets" / "2026-11-20.jsonl"

CASES = {
    # retryable item errors (429/500) on 30% of the first attempt's requests
    "faulty_item_errors": {"emu_faults": "item_errors=0.3:429/500", "fail_on_dead_letter": True},
    # the first batch expires with half its requests done: partial results, the rest retried
    "faulty_expiry": {"emu_faults": "expire=0.5", "fail_on_dead_letter": True},
    # invalid requests (400) are not retryable: straight to the dead letter file, task fails
    "faulty_dead_letter": {"emu_faults": "item_errors=0.3:400", "fail_on_dead_letter": True},
}

for dag_id, case in CASES.items():
    with DAG(dag_id=dag_id, schedule=None, start_date=datetime(2026, 1, 1), catchup=False) as dag:
        submit = SubmitBatchOperator(
            task_id="submit",
            provider="openai",
            input_path=str(TICKETS),
            prompt_template="{{ subject }}\n{{ body }}",
            model="gpt-4o-mini",
            max_tokens=64,
            metadata={"emu_faults": case["emu_faults"]},
        )
        wait = BatchSensor(task_id="wait", poll_interval=0.2, max_poll_interval=0.5)
        collect = CollectBatchOperator(task_id="collect", handle=submit.output)
        retry = RetryBatchOperator(
            task_id="retry",
            max_attempts=3,
            poll_interval=0.2,
            max_poll_interval=0.5,
            fail_on_dead_letter=case["fail_on_dead_letter"],
        )
        submit >> wait >> collect >> retry
    globals()[dag_id] = dag
