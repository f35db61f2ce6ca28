"""Monthly sentiment tagging of historical product reviews, made for ``airflow backfill create``."""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from pathlib import Path

from airflow.sdk import DAG, CronDataIntervalTimetable

from batch_provider.task_group import llm_batch_group

DATA = os.environ.get("BATCH_EXAMPLES_DATA", f"file://{Path(__file__).resolve().parent / 'data'}")
POLL_SECONDS = float(os.environ.get("BATCH_EXAMPLES_POLL_INTERVAL", "60"))

REVIEW_SCHEMA = {
    "type": "object",
    "properties": {
        "sentiment": {"type": "string", "enum": ["negative", "mixed", "positive"]},
        "topics": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
        "defect_reported": {"type": "boolean"},
    },
    "required": ["sentiment", "topics", "defect_reported"],
    "additionalProperties": False,
}

with DAG(
    dag_id="historical_backfill",
    schedule=CronDataIntervalTimetable("@monthly", timezone="UTC"),
    start_date=datetime(2026, 1, 1),
    end_date=datetime(2026, 6, 30),
    catchup=False,
    max_active_runs=3,
    tags=["llm-batch", "example"],
    doc_md="""
### Historical backfill

Tags a month of product reviews (`data/reviews/YYYY-MM.jsonl`, January to June 2026) with
sentiment, topics and whether a defect is reported. The DAG covers that period only (`end_date`)
and `catchup` is off: history is processed on demand with a backfill, e.g.

```
airflow backfill create --dag-id historical_backfill \\
    --from-date 2026-01-01 --to-date 2026-06-01 --max-active-runs 3
```

Each monthly interval is its own DAG run, so it gets its own run folder, ledger and batches; months
never share or overwrite files. Re-running a month (clearing it, or a backfill with
`--reprocess-behavior completed`) re-attaches to that month's batches recorded in its ledger
instead of paying for them again.

Connection: `llm_openai_default`.
""",
) as dag:
    llm_batch_group(
        "tag_reviews",
        provider="openai",
        conn_id="llm_openai_default",
        input_path=DATA + "/reviews/{{ data_interval_start.strftime('%Y-%m') }}.jsonl",
        prompt_template="Product: {{ product }}\nStars: {{ stars }}\nReview: {{ text }}",
        system="Tag the review: overall sentiment, up to three topics, and whether it reports a defect.",
        model="gpt-6-luna",
        max_tokens=200,
        response_schema=REVIEW_SCHEMA,
        metadata={"cost_centre": "insights", "pipeline": "review-backfill"},
        max_attempts=2,
        timeout=timedelta(hours=25),
        poll_interval=POLL_SECONDS,
    )
