"""Customer feedback tagged per region: one mapped ``llm_batch_group`` per input file."""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from pathlib import Path

from airflow.sdk import DAG, ObjectStoragePath, task, task_group

from batch_provider.task_group import llm_batch_group

DATA = os.environ.get("BATCH_EXAMPLES_DATA", f"file://{Path(__file__).resolve().parent / 'data'}")
POLL_SECONDS = float(os.environ.get("BATCH_EXAMPLES_POLL_INTERVAL", "60"))

FEEDBACK_SCHEMA = {
    "type": "object",
    "properties": {
        "topic": {
            "type": "string",
            "enum": ["checkout", "delivery", "app", "support", "pricing", "quality", "other"],
        },
        "sentiment": {"type": "string", "enum": ["negative", "mixed", "positive"]},
        "needs_follow_up": {"type": "boolean"},
    },
    "required": ["topic", "sentiment", "needs_follow_up"],
    "additionalProperties": False,
}

with DAG(
    dag_id="partitioned_feedback",
    schedule=None,
    start_date=datetime(2026, 12, 1),
    catchup=False,
    tags=["llm-batch", "example"],
    doc_md="""
### Partitioned feedback

Customer feedback arrives as one file per region (`data/feedback/<region>.jsonl`). `partitions`
lists the files; `tag_region` is a task group mapped over them, so each file is one map index
with its own batches, run folder (`.../tag_region.feedback.map-<N>/`), retries, dead letter and
final manifest. A region whose rows fail is retried on its own; the other regions are not
touched.

Connection: `llm_openai_default`.
""",
) as dag:

    @task
    def partitions() -> list[str]:
        """One input file per region, in a stable order (the map indexes follow it)."""
        return sorted(str(p) for p in ObjectStoragePath(DATA + "/feedback").iterdir() if p.suffix == ".jsonl")

    @task_group
    def tag_region(input_path: str) -> None:
        llm_batch_group(
            "feedback",
            provider="openai",
            conn_id="llm_openai_default",
            input_path=input_path,
            prompt_template="Store: {{ store }} ({{ channel }})\nFeedback: {{ text }}",
            system="Tag the customer feedback: its topic, sentiment and whether someone should follow up.",
            model="gpt-6-luna",
            max_tokens=120,
            response_schema=FEEDBACK_SCHEMA,
            metadata={"pipeline": "feedback-by-region"},
            max_attempts=3,
            timeout=timedelta(hours=25),
            poll_interval=POLL_SECONDS,
        )

    tag_region.expand(input_path=partitions())
