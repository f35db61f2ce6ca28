"""``@task.batch_llm`` returning prompt strings (sent as written, never Jinja-rendered) and ready
requests (``LLMRequest`` fields), with arguments passed to the function like any TaskFlow call."""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import DAG, task

from batch_provider.core.models import LLMRequest

with DAG(dag_id="decorator_inputs", schedule=None, start_date=datetime(2026, 1, 1), catchup=False) as dag:

    @task
    def topics() -> list[str]:
        return ["tides", "volcanoes", "comets"]

    @task.batch_llm(provider="openai", model="gpt-4o-mini", max_tokens=16, system="Answer in one line.",
                    poll_interval=0.3, max_poll_interval=0.5)
    def prompts(names: list[str]) -> list[str]:
        return [f"Explain {name}; keep {{{{ ds }}}} and {{% raw %}} as written." for name in names]

    @task.batch_llm(provider="openai", max_tokens=16, poll_interval=0.3, max_poll_interval=0.5)
    def requests() -> list:
        return [
            LLMRequest(custom_id="req-a", model="gpt-4o-mini",
                       messages=[{"role": "user", "content": "Say A"}]),
            {"custom_id": "req-b", "model": "gpt-4o-mini", "messages": [{"role": "user", "content": "B"}]},
        ]

    prompts(topics())
    requests.override(task_id="ready_requests")()
