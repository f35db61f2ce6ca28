"""A run whose batch the emulator may hold in its queue (see tests/airflow/test_late_batches.py):
the wait reports it overdue through ``on_overdue``, which appends one line per call to the file
named by ``$LATE_RUNS_CALLS``."""

from __future__ import annotations

import json
import os
from datetime import datetime
from typing import Any

from airflow.sdk import DAG

from batch_provider.task_group import llm_batch_group

START = datetime(2026, 1, 1)
ROWS = [{"id": f"t-{i:02d}", "text": f"ticket number {i}"} for i in range(10)]


def record_overdue(context: dict[str, Any]) -> None:
    details = context["batch_overdue"]
    line = {"task_id": context["ti"].task_id, "overdue": details["overdue"], "progress": details["progress"]}
    with open(os.environ["LATE_RUNS_CALLS"], "a") as fh:
        fh.write(json.dumps(line) + "\n")


def late_group(**options: Any) -> None:
    llm_batch_group(
        "tickets",
        provider="openai",
        records=ROWS,
        prompt_template="Classify: {{ text }}",
        model="gpt-4o-mini",
        max_tokens=16,
        timeout=300,
        poll_interval=0.2,
        max_poll_interval=0.5,
        on_overdue=record_overdue,
        use_cache=False,
        **options,
    )


with DAG(dag_id="late_fixed", schedule=None, start_date=START, catchup=False) as late_fixed:
    late_group(expected_within=3.0)

with DAG(dag_id="late_history", schedule=None, start_date=START, catchup=False) as late_history:
    late_group(overdue_factor=1.5)
