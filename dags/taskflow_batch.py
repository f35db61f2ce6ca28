"""TaskFlow with ``@task.batch_llm``: a function picks the rows, the provider runs them as a batch.

``taskflow_batch`` drafts a first reply to each open chat or phone ticket of a day. The decorated
function returns the tickets (dicts) and ``prompt_template`` turns each into a request; calling it
builds the group ``draft_replies`` (submit >> wait >> collect >> retry) and returns the run
summary, which the ``count_drafts`` task reads.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timedelta
from pathlib import Path

from airflow.sdk import DAG, ObjectStoragePath, task

DATA = os.environ.get("BATCH_EXAMPLES_DATA", f"file://{Path(__file__).resolve().parent / 'data'}")
POLL_SECONDS = float(os.environ.get("BATCH_EXAMPLES_POLL_INTERVAL", "60"))

with DAG(
    dag_id="taskflow_batch",
    schedule=None,
    start_date=datetime(2026, 11, 18),
    catchup=False,
    params={"day": "2026-11-19"},
    tags=["llm-batch", "example"],
    doc_md="""
### TaskFlow batch

`@task.batch_llm` on a function that returns the day's chat and phone tickets
(`data/tickets/<day>.jsonl`); each becomes a request through `prompt_template`. The function
runs inside the group's `submit` task and must return the same rows on every try (it reads a
fixed file and keeps its order). What it returns is never rendered by Jinja.

Connection: `llm_anthropic_default` (type *Anthropic Message Batches API*).
""",
) as dag:

    @task.batch_llm(
        provider="anthropic",
        model="claude-haiku-4-5",
        max_tokens=250,
        system="You are a support agent. Draft a short, friendly first reply.",
        prompt_template="Customer {{ customer }} wrote via {{ channel }}: {{ subject }}\n\n{{ body }}",
        metadata={"cost_centre": "support-ops"},
        max_attempts=2,
        timeout=timedelta(hours=25),
        poll_interval=POLL_SECONDS,
        max_poll_interval=POLL_SECONDS * 5,
    )
    def draft_replies(params: dict) -> list[dict]:
        """Open chat and phone tickets of the day, in file order."""
        path = ObjectStoragePath(f"{DATA}/tickets/{params['day']}.jsonl")
        tickets = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return [t for t in tickets if t["channel"] in ("chat", "phone")]

    @task
    def count_drafts(summary: dict) -> dict:
        results = ObjectStoragePath(summary["files"]["results"]).read_text().splitlines()
        return {"drafts": len(results), "unresolved": summary["unresolved"], "cost": summary["cost"]}

    count_drafts(draft_replies())
