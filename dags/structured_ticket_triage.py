"""Structured output with a pydantic model: each ticket becomes a validated ``Triage`` object.

``structured_ticket_triage`` asks an OpenAI model, through the Batch API, for a ``Triage`` of each
ticket of a day. ``output_type=Triage`` is sent as OpenAI's ``response_format`` (a JSON schema);
every answer is validated against the model at collect, answers that do not validate are filed
as ``invalid_output`` and sent once more, and ``triage_report`` reads the results back as
``Triage`` instances with ``load_results``.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path
from typing import Literal

from airflow.sdk import DAG, ObjectStoragePath, task
from pydantic import BaseModel, Field

from batch_provider.results import load_results

DATA = os.environ.get("BATCH_EXAMPLES_DATA", f"file://{Path(__file__).resolve().parent / 'data'}")
POLL_SECONDS = float(os.environ.get("BATCH_EXAMPLES_POLL_INTERVAL", "60"))


class Triage(BaseModel):
    """What the model answers for one ticket."""

    category: Literal["billing", "technical", "account", "shipping", "feature_request", "other"]
    urgent: bool
    summary: str = Field(description="One sentence")


with DAG(
    dag_id="structured_ticket_triage",
    schedule=None,
    start_date=datetime(2026, 11, 18),
    catchup=False,
    params={"day": "2026-11-19"},
    tags=["llm-batch", "example"],
    doc_md="""
### Structured ticket triage

Each ticket of the day (`data/tickets/<day>.jsonl`) gets a `Triage` (category, urgent, summary)
from an OpenAI model. `output_type=Triage` is the answer's type: answers that do not validate are
in `errors.jsonl` with status `invalid_output` (raw text and errors) and are sent once more
(`retry_invalid_output=1`); `triage_report` loads the results as `Triage` objects.

Connection: `llm_openai_default` (type *OpenAI Batch API*).
""",
) as dag:

    @task.batch_llm(
        provider="openai",
        conn_id="llm_openai_default",
        model="gpt-4o-mini",
        max_tokens=300,
        system="You triage support tickets.",
        prompt_template="{{ subject }}\n\n{{ body }}",
        output_type=Triage,
        retry_invalid_output=1,
        max_attempts=2,
        timeout=timedelta(hours=25),
        poll_interval=POLL_SECONDS,
        max_poll_interval=POLL_SECONDS * 5,
    )
    def triage(params: dict) -> list[dict]:
        """The day's tickets, in file order."""
        path = ObjectStoragePath(f"{DATA}/tickets/{params['day']}.jsonl")
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    @task
    def triage_report(summary: dict) -> dict:
        tickets = load_results(summary, Triage)
        return {
            "triaged": len(tickets),
            "urgent": sum(t.urgent for t in tickets),
            "by_category": dict(Counter(t.category for t in tickets)),
            "invalid_output": summary["invalid_output"],
            "dead_letter": summary["dead_letter"],
        }

    triage_report(triage())
