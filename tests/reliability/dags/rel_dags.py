"""DAGs for the reliability tests run by the real scheduler and triggerer.

- ``rel_restart``: submit → deferred wait → collect → retry (OpenAI); the triggerer is killed
  and started again while the wait is deferred.
- ``rel_cancel``: the same on Anthropic with ``cancel_on_kill``; the run is marked failed while
  the wait is deferred.
- ``rel_failing``: a row the provider refuses goes to the dead letter and fails the retry task;
  a second wait watches a batch id the provider does not know and fails.
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import DAG

from batch_provider.operators import CollectBatchOperator, RetryBatchOperator, SubmitBatchOperator
from batch_provider.sensors import BatchSensor

RECORDS = [{"id": f"q-{i:03d}", "text": f"reliability row {i}"} for i in range(12)]
MODELS = {"openai": "gpt-6-luna", "anthropic": "claude-haiku-4-5"}


def pipeline(dag_id: str, provider: str, records: list, **options) -> DAG:
    with DAG(dag_id=dag_id, schedule=None, start_date=datetime(2026, 1, 1), catchup=False) as dag:
        submit = SubmitBatchOperator(
            task_id="submit",
            provider=provider,
            records=records,
            prompt_template="Say {{ text }}",
            model=MODELS[provider],
            max_tokens=16,
            max_requests_per_batch=6,
            metadata={"team": "reliability"},
        )
        wait = BatchSensor(
            task_id="wait",
            poll_interval=1.0,
            max_poll_interval=1.0,
            cancel_on_kill=options.get("cancel_on_kill", False),
        )
        collect = CollectBatchOperator(task_id="collect", handle=submit.output)
        retry = RetryBatchOperator(
            task_id="retry",
            max_attempts=2,
            poll_interval=0.5,
            max_poll_interval=1.0,
            fail_on_dead_letter=options.get("fail_on_dead_letter", False),
        )
        submit >> wait >> collect >> retry
        if options.get("bogus_wait"):
            BatchSensor(
                task_id="wait_unknown_batch",
                handle={
                    "run_path": "file:///tmp/batch_provider/rel_failing/unknown",
                    "provider": provider,
                    "conn_id": f"llm_{provider}_default",
                    "batches": [
                        {
                            "provider": provider,
                            "batch_id": "batch_does_not_exist_0000",
                            "chunk_index": 0,
                            "request_count": 1,
                            "created_at": "2026-01-01T00:00:00Z",
                        }
                    ],
                },
                poll_interval=0.5,
                max_poll_interval=1.0,
            )
    return dag


rel_restart = pipeline("rel_restart", "openai", RECORDS)
rel_cancel = pipeline("rel_cancel", "anthropic", RECORDS, cancel_on_kill=True)
rel_failing = pipeline(
    "rel_failing",
    "openai",
    [*RECORDS[:5], {"id": "emu-fail400-q-900", "text": "refused by the provider [[emu:fail400]]"}],
    fail_on_dead_letter=True,
    bogus_wait=True,
)
