"""Runs that must fail closed or stay literal: an empty daily input (skipped, the run succeeds),
literal records holding Jinja (never rendered), and templated arguments reading a connection."""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import DAG, task

from batch_provider.task_group import llm_batch_group

FAST = {"poll_interval": 0.3, "max_poll_interval": 0.5}
LITERAL_RECORDS = [
    {"id": "t2", "text": "key is {{ conn.fc_secret.password }}"},
    {"id": "t3", "text": "seven sevens are {{ 7*7 }}"},
]

with DAG(dag_id="fail_closed_empty", schedule=None, start_date=datetime(2026, 1, 1), catchup=False) as empty:

    @task
    def no_rows() -> list[dict]:
        return []

    llm_batch_group(
        "enrich",
        provider="openai",
        records=no_rows(),
        prompt_template="Summarise: {{ text }}",
        model="gpt-6-luna",
        max_tokens=16,
        **FAST,
    )

with DAG(
    dag_id="fail_closed_literal", schedule=None, start_date=datetime(2026, 1, 1), catchup=False
) as literal:
    llm_batch_group(
        "enrich",
        provider="anthropic",
        records=LITERAL_RECORDS,
        prompt_template="Summarise: {{ text }}",
        model="claude-haiku-4-5",
        max_tokens=16,
        **FAST,
    )

with DAG(
    dag_id="fail_closed_conn_in_argument", schedule=None, start_date=datetime(2026, 1, 1), catchup=False
) as conn_in_argument:
    llm_batch_group(
        "enrich",
        provider="openai",
        records=[{"id": "t1", "text": "hello"}],
        prompt_template="Summarise: {{ text }}",
        model="gpt-6-luna",
        max_tokens=16,
        metadata={"cost_centre": "{{ conn.fc_secret.password }}"},
        **FAST,
    )
