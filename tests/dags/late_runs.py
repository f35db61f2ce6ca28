"""Runs whose batches the emulator may hold in its queue (see tests/airflow/test_late_batches.py):
the wait, or the retry task for the attempt it resubmits, reports a late batch through
``on_overdue``, which appends one line per call to the file named by ``$LATE_RUNS_CALLS``.

The ``late_retry`` runs send one row with the emulator's text marker for a transient item error
(500): the first attempt answers the other rows, and the retry task resubmits that row alone in
attempt 2 (it succeeds there when the emulator's ``item_recovery`` is 1)."""

from __future__ import annotations

import json
import os
from datetime import datetime
from typing import Any

from airflow.sdk import DAG

from batch_provider.operators import CollectBatchOperator, SubmitBatchOperator
from batch_provider.sensors import BatchSensor
from batch_provider.task_group import llm_batch_group

START = datetime(2026, 1, 1)
ROWS = [{"id": f"t-{i:02d}", "text": f"ticket number {i}"} for i in range(10)]
FLAKY_ROWS = [{**ROWS[0], "text": ROWS[0]["text"] + " [[emu:fail500]]"}, *ROWS[1:]]


def record_overdue(context: dict[str, Any]) -> None:
    details = context["batch_overdue"]
    line = {"task_id": context["ti"].task_id, "overdue": details["overdue"], "progress": details["progress"]}
    with open(os.environ["LATE_RUNS_CALLS"], "a") as fh:
        fh.write(json.dumps(line) + "\n")


def late_group(**options: Any) -> None:
    settings: dict[str, Any] = {
        "provider": "openai",
        "records": ROWS,
        "prompt_template": "Classify: {{ text }}",
        "model": "gpt-4o-mini",
        "max_tokens": 16,
        "timeout": 300,
        "poll_interval": 0.2,
        "max_poll_interval": 0.5,
        "on_overdue": record_overdue,
        "use_cache": False,
    }
    llm_batch_group("tickets", **{**settings, **options})


with DAG(dag_id="late_fixed", schedule=None, start_date=START, catchup=False) as late_fixed:
    late_group(expected_within=3.0)

with DAG(dag_id="late_history", schedule=None, start_date=START, catchup=False) as late_history:
    late_group(overdue_factor=1.5)

# the sensor pokes from the worker, the retry task waits there too
with DAG(dag_id="late_poke", schedule=None, start_date=START, catchup=False) as late_poke:
    late_group(expected_within=3.0, deferrable=False)

with DAG(dag_id="late_reschedule", schedule=None, start_date=START, catchup=False) as late_reschedule:
    submit = SubmitBatchOperator(
        task_id="submit",
        provider="openai",
        records=ROWS,
        prompt_template="Classify: {{ text }}",
        model="gpt-4o-mini",
        max_tokens=16,
        use_cache=False,
    )
    wait = BatchSensor(
        task_id="wait",
        handle=submit.output,
        deferrable=False,
        mode="reschedule",
        poll_interval=0.5,
        timeout=300,
        expected_within=3.0,
        on_overdue=record_overdue,
    )
    collect = CollectBatchOperator(task_id="collect", handle=submit.output, use_cache=False)
    submit >> wait >> collect

# attempt 1 is on time (10 requests in about 2 s); the emulator may hold attempt 2 in its queue
with DAG(dag_id="late_retry", schedule=None, start_date=START, catchup=False) as late_retry:
    late_group(records=FLAKY_ROWS, expected_within=5.0)

with DAG(dag_id="late_retry_worker", schedule=None, start_date=START, catchup=False) as late_retry_worker:
    late_group(records=FLAKY_ROWS, expected_within=5.0, deferrable=False)
