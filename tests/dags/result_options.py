"""The result-file options through Airflow: ``@task.batch_llm`` embeddings written as Parquet,
and an ``llm_batch_group`` chat run that keeps the raw provider body."""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import DAG, task

from batch_provider.task_group import llm_batch_group

with DAG(dag_id="result_options", schedule=None, start_date=datetime(2026, 1, 1), catchup=False) as dag:

    @task.batch_llm(provider="openai", model="text-embedding-3-small", kind="embedding",
                    results_format="parquet", poll_interval=0.3, max_poll_interval=0.5)
    def vectors() -> list[str]:
        return ["tides", "volcanoes", "comets"]

    vectors()
    llm_batch_group(
        "raw_kept",
        provider="openai",
        records=[{"id": "a", "q": "tides"}, {"id": "b", "q": "comets"}],
        prompt_template="Explain {{ q }}",
        model="gpt-4o-mini",
        max_tokens=16,
        keep_raw=True,
        poll_interval=0.3,
        max_poll_interval=0.5,
    )
