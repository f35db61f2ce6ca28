"""common-ai's own ``@task.llm_batch`` and ``LLMBatchOperator`` running on this provider's Bedrock
and Gemini backends through their common-ai batch adapters. The test sets the result folder,
row count and poll interval in the environment before loading this file."""

from __future__ import annotations

import os
from datetime import datetime

from airflow.providers.common.ai.operators.llm_batch import LLMBatchOperator
from airflow.sdk import DAG, task
from pydantic import BaseModel

RESULTS = os.environ.get("COMMON_AI_RESULTS", "file:///tmp/common-ai-results")
ROWS = int(os.environ.get("COMMON_AI_ROWS", "120"))
POLL = float(os.environ.get("COMMON_AI_POLL", "30"))
CLAUDE = "anthropic.claude-haiku-4-5-20251001-v1:0"


class Ticket(BaseModel):
    category: str
    urgent: bool


START = datetime(2026, 1, 1)

with DAG(dag_id="common_ai_bedrock", schedule=None, start_date=START, catchup=False) as bedrock:

    @task.llm_batch(
        llm_conn_id="aws_common_ai",
        model_id=f"bedrock:{CLAUDE}",
        result_path=RESULTS + "/bedrock",
        system_prompt="Answer in one line.",
        max_tokens=32,
        poll_interval=POLL,
        deferrable=False,
    )
    def summaries(count: int) -> list[str]:
        return [f"Summarise ticket {i}" for i in range(count)]

    summaries(ROWS)


with DAG(dag_id="common_ai_gemini", schedule=None, start_date=START, catchup=False) as gemini:
    LLMBatchOperator(
        task_id="classify",
        llm_conn_id="llm_gemini_default",
        model_id="google:gemini-2.5-flash",
        requests=[{"prompt": f"Classify ticket {i}", "params": {"temperature": 0.1}} for i in range(ROWS)],
        result_path=RESULTS + "/gemini",
        output_type=Ticket,
        poll_interval=POLL,
        deferrable=False,
    )
