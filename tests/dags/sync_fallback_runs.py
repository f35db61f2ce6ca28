"""A run whose batches are still working at ``sync_fallback_at`` (15 s after submit): the wait
cancels them, collect keeps what they answered, and the retry task sends the long tail to the
synchronous API (see tests/airflow/test_sync_fallback_dag.py): one run on OpenAI, one on Bedrock
(an ``aws`` connection whose ``service_config`` points bedrock, bedrock-runtime and S3 at the
emulator)."""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import DAG

from batch_provider.task_group import llm_batch_group

ROWS = [{"id": f"t-{i:02d}", "text": f"ticket number {i}"} for i in range(16)]
FALLBACK_AFTER = timedelta(seconds=15)
"""After submit; the emulator answers one request per 10 s, so the batch is still at work."""

with DAG(dag_id="sync_fallback_tail", schedule=None, start_date=datetime(2026, 1, 1), catchup=False) as tail:
    llm_batch_group(
        "tickets",
        provider="openai",
        records=ROWS,
        prompt_template="Classify: {{ text }}",
        model="gpt-4o-mini",
        max_tokens=16,
        timeout=600,
        timeout_grace=60,
        poll_interval=0.2,
        max_poll_interval=0.5,
        sync_fallback_at=FALLBACK_AFTER,
        sync_concurrency=4,
        on_timeout="retry",
    )

BEDROCK_CONN_ID = "aws_sync_fallback"
BEDROCK_MODEL = "anthropic.claude-haiku-4-5-20251001-v1:0"

with DAG(
    dag_id="sync_fallback_tail_bedrock", schedule=None, start_date=datetime(2026, 1, 1), catchup=False
) as bedrock_tail:
    llm_batch_group(
        "tickets",
        provider="bedrock",
        conn_id=BEDROCK_CONN_ID,
        records=ROWS,
        prompt_template="Classify: {{ text }}",
        model=BEDROCK_MODEL,
        max_tokens=16,
        timeout=600,
        timeout_grace=60,
        poll_interval=0.2,
        max_poll_interval=0.5,
        sync_fallback_at=FALLBACK_AFTER,
        sync_concurrency=4,
        on_timeout="retry",
    )
