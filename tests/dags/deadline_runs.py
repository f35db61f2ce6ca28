"""Runs whose wait passes its deadline: the group cancels the batches, waits for them to end,
collects what they answered and ends the run as ``on_timeout`` says. The emulator decides how
far the batches get before the deadline (see tests/airflow/test_deadline.py)."""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import DAG

from batch_provider.task_group import llm_batch_group

ROWS = [{"id": f"t-{i:02d}", "text": f"ticket number {i}"} for i in range(10)]
TIMEOUT_SECONDS = 6.0


def tickets_group(**options: object) -> None:
    llm_batch_group(
        "tickets",
        provider="openai",
        records=ROWS,
        prompt_template="Classify: {{ text }}",
        model="gpt-4o-mini",
        max_tokens=16,
        timeout=TIMEOUT_SECONDS,
        poll_interval=0.2,
        max_poll_interval=0.5,
        **options,
    )


for dag_id, on_timeout in {
    "deadline_partial": "partial",
    "deadline_fail": "fail",
    "deadline_retry": "retry",
}.items():
    with DAG(dag_id=dag_id, schedule=None, start_date=datetime(2026, 1, 1), catchup=False) as dag:
        tickets_group(timeout_grace=60, on_timeout=on_timeout)
    globals()[dag_id] = dag

# not cancelled at the deadline and still running when the short grace ends: the wait fails,
# collect runs anyway (the group's trigger rule), waits for the batch, and lands its answers
with DAG(dag_id="deadline_unended", schedule=None, start_date=datetime(2026, 1, 1), catchup=False) as unended:
    tickets_group(timeout_grace=1, cancel_on_timeout=False)
