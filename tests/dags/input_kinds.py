"""Inputs other than a file of rows: records from another task's XCom, and a ready requests file
in the provider's native format (built by an upstream task)."""

from __future__ import annotations

import json
import os
from datetime import datetime

from airflow.sdk import DAG, task

from batch_provider.task_group import llm_batch_group

with DAG(dag_id="input_kinds", schedule=None, start_date=datetime(2026, 1, 1), catchup=False) as dag:

    @task
    def questions() -> list[dict]:
        return [{"id": f"q{i}", "question": f"What is {i} + {i}?"} for i in range(5)]

    @task
    def native_requests() -> str:
        folder = os.path.join(os.environ["BATCH_PROVIDER_RUN_PATH"].removeprefix("file://"), "inputs")
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, "native.jsonl")
        with open(path, "w") as fh:
            for i in range(4):
                body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"Say {i}"}]}
                line = {"custom_id": f"n{i}", "method": "POST", "url": "/v1/chat/completions", "body": body}
                fh.write(json.dumps(line) + "\n")
        return path

    from_xcom = llm_batch_group(
        "from_xcom",
        provider="openai",
        records=questions(),
        prompt_template="{{ question }}",
        model="gpt-4o-mini",
        max_tokens=16,
        poll_interval=0.3,
        max_poll_interval=0.5,
    )
    native = llm_batch_group(
        "native",
        provider="openai",
        requests_path=native_requests(),
        max_tokens=16,
        poll_interval=0.3,
        max_poll_interval=0.5,
    )
