"""The nightly ticket enrichment on AWS Bedrock batch inference, through an ``aws`` connection."""

from __future__ import annotations

import json
import os
from datetime import datetime, timedelta
from pathlib import Path

from airflow.sdk import DAG, CronDataIntervalTimetable

from batch_provider.operators.batch import results_asset
from batch_provider.task_group import llm_batch_group

DATA = os.environ.get("BATCH_EXAMPLES_DATA", f"file://{Path(__file__).resolve().parent / 'data'}")
POLL_SECONDS = float(os.environ.get("BATCH_EXAMPLES_POLL_INTERVAL", "60"))
AWS_CONN_ID = "aws_bedrock"
MODEL = "anthropic.claude-haiku-4-5-20251001-v1:0"

ENRICHED_TICKETS_BEDROCK = results_asset("nightly_ticket_enrichment_bedrock", "enrich")

TICKET_CLASSIFICATION = Path(__file__).resolve().parent / "data" / "ticket_classification"
TICKET_SCHEMA = json.loads((TICKET_CLASSIFICATION / "schema.json").read_text())
PROMPT = (TICKET_CLASSIFICATION / "prompt.jinja").read_text().strip()

with DAG(
    dag_id="nightly_ticket_enrichment_bedrock",
    schedule=CronDataIntervalTimetable("@daily", timezone="UTC"),
    start_date=datetime(2026, 11, 18),
    catchup=False,
    max_active_runs=1,
    tags=["llm-batch", "example", "bedrock"],
    doc_md=f"""
### Nightly ticket enrichment (AWS Bedrock)

The `nightly_ticket_enrichment` pipeline on Bedrock batch inference with Claude Haiku
(`{MODEL}`): each night's tickets are uploaded to S3 as one model-invocation job, the
answers (JSON following the ticket schema) are read back from the job's output prefix, and
retryable failures are resubmitted.

Connection: `{AWS_CONN_ID}`, a plain *Amazon Web Services* connection (credentials, region,
`role_arn` for Airflow itself) with these extras:

* `bedrock_role_arn` (required): the service role Bedrock assumes to read and write S3;
* `bedrock_s3_uri` (or `bedrock_s3_input_uri` + `bedrock_s3_output_uri`): where jobs' input
  and output live;
* optional `bedrock_timeout_hours`, `bedrock_invocation_type`, `bedrock_min_records_per_job`
  (Bedrock needs 100 records per job unless your account allows fewer).
""",
) as dag:
    llm_batch_group(
        "enrich",
        provider="bedrock",
        conn_id=AWS_CONN_ID,
        input_path=DATA + "/tickets/{{ data_interval_start.strftime('%Y-%m-%d') }}.jsonl",
        prompt_template=PROMPT,
        system="You are a support operations analyst. Answer only with the requested JSON.",
        model=MODEL,
        max_tokens=300,
        response_schema=TICKET_SCHEMA,
        metadata={"cost_centre": "support-ops", "pipeline": "ticket-enrichment"},
        max_attempts=3,
        timeout=timedelta(hours=25),
        poll_interval=POLL_SECONDS,
        results_asset=ENRICHED_TICKETS_BEDROCK,
    )
