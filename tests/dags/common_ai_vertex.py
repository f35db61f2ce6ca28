"""common-ai's own ``@task.llm_batch`` and ``LLMBatchOperator`` running on this provider's Vertex
backend through its common-ai batch adapter (``google-cloud:`` and ``google-vertex:`` prefixes).
The test sets the result folder, row count and poll interval in the environment before loading
this file."""

from __future__ import annotations

import os
from datetime import datetime

from airflow.providers.common.ai.operators.llm_batch import LLMBatchOperator
from airflow.sdk import DAG, task
from pydantic import BaseModel

RESULTS = os.environ.get("COMMON_AI_RESULTS", "file:///tmp/common-ai-results")
ROWS = int(os.environ.get("COMMON_AI_ROWS", "120"))
POLL = float(os.environ.get("COMMON_AI_POLL", "30"))


class Ticket(BaseModel):
    category: str
    urgent: bool


with DAG(dag_id="common_ai_vertex", schedule=None, start_date=datetime(2026, 1, 1), catchup=False) as vertex:

    @task.llm_batch(
        llm_conn_id="llm_vertex_common_ai",
        model_id="google-cloud:gemini-2.5-flash",
        result_path=RESULTS + "/vertex-summaries",
        system_prompt="Answer in one line.",
        max_tokens=32,
        poll_interval=POLL,
        deferrable=False,
    )
    def summaries(count: int) -> list[str]:
        return [f"Summarise ticket {i}" for i in range(count)]

    summaries(ROWS)

    LLMBatchOperator(
        task_id="classify",
        llm_conn_id="llm_vertex_common_ai",
        model_id="google-vertex:gemini-2.5-flash",
        requests=[{"prompt": f"Classify ticket {i}", "params": {"temperature": 0.1}} for i in range(ROWS)],
        result_path=RESULTS + "/vertex-classify",
        output_type=Ticket,
        poll_interval=POLL,
        deferrable=False,
    )
