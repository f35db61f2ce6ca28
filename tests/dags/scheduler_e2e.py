"""A run for the real scheduler + triggerer test: the wait task defers while a ~30 s batch runs,
and ``side`` (needing the single executor slot) runs meanwhile. ``retries=1`` absorbs the
executor's occasional late "finished" report after a resumed task (a known scheduler race)."""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from pathlib import Path

from airflow.sdk import DAG, task

from batch_provider.task_group import llm_batch_group

TICKETS = Path(__file__).resolve().parents[2] / "dags" / "data" / "tickets" / "2026-11-20.jsonl"

with DAG(
    dag_id="scheduler_e2e",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    default_args={"retries": 1, "retry_delay": timedelta(seconds=2)},
) as dag:
    group = llm_batch_group(
        "llm",
        provider="openai",
        input_path=str(TICKETS),
        prompt_template="{{ subject }}",
        model="gpt-4o-mini",
        max_tokens=32,
        poll_interval=1.0,
        max_poll_interval=2.0,
    )

    @task
    def side() -> str:
        time.sleep(2)
        return "ran while the batch was being watched"

    dag.get_task("llm.submit") >> side()


with DAG(dag_id="scheduler_kill", schedule=None, start_date=datetime(2026, 1, 1), catchup=False) as kill_dag:
    llm_batch_group(
        "llm",
        provider="openai",
        input_path=str(TICKETS),
        prompt_template="{{ subject }}",
        model="gpt-4o-mini",
        max_tokens=32,
        poll_interval=1.0,
        max_poll_interval=2.0,
        cancel_on_kill=True,
        use_cache=False,  # same requests as scheduler_e2e: a live batch is needed to kill
        max_attempts=1,  # collect still lands what the killed batch answered; nothing is resent
    )
