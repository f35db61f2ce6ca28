"""Runs whose run folder is on S3 behind a proxy that fails some writes (see
tests/airflow/test_storage_faults.py): one connection per DAG, as Airflow keeps one filesystem per
connection id in a process."""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import DAG

from batch_provider.task_group import llm_batch_group

ROWS = [{"id": f"t-{i:02d}", "text": f"ticket number {i}"} for i in range(10)]

for dag_id in ("s3_cache_faults", "s3_write_faults"):
    with DAG(dag_id=dag_id, schedule=None, start_date=datetime(2026, 1, 1), catchup=False) as dag:
        llm_batch_group(
            "tickets",
            provider="openai",
            records=ROWS,
            prompt_template="Classify: {{ text }}",
            model="gpt-4o-mini",
            max_tokens=16,
            run_path=f"s3://bp_{dag_id}@llm/runs",
            poll_interval=0.2,
            max_poll_interval=0.5,
            collect_retries=2,
            collect_retry_delay=timedelta(seconds=1),
        )
    globals()[dag_id] = dag
