"""Mapped task groups: ``llm_batch_group`` inside a ``@task_group`` mapped over inputs, and
``@task.batch_llm`` inside one mapped over the decorated function's argument."""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import DAG, task, task_group

from batch_provider.task_group import llm_batch_group

FAST = {"poll_interval": 0.3, "max_poll_interval": 0.5}

with DAG(dag_id="mapped_groups", schedule=None, start_date=datetime(2026, 1, 1), catchup=False) as dag:

    @task_group
    def per_team(records: list[dict]):
        llm_batch_group(
            "answer", provider="openai", records=records, prompt_template="{{ q }}",
            model="gpt-4o-mini", max_tokens=16, **FAST,
        )

    per_team.expand(records=[[{"id": f"a{i}", "q": f"A {i}?"} for i in range(3)], [{"id": "b0", "q": "B?"}]])

    @task_group
    def per_topic(topic: str):
        @task.batch_llm(provider="anthropic", model="claude-haiku-4-5", max_tokens=16, **FAST)
        def ask(name: str) -> list[str]:
            return [f"One fact about {name}", f"One joke about {name}"]

        ask(topic)

    per_topic.expand(topic=["owls", "otters"])
