"""Nightly enrichment of yesterday's support tickets, and a report DAG fed by its results.

``nightly_ticket_enrichment`` runs once a day for the previous day's tickets. The ``ticket_enrichment_report``
DAG is scheduled on the results Asset, so it runs whenever fresh enriched tickets are published.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path

from airflow.sdk import DAG, CronDataIntervalTimetable, ObjectStoragePath, task

from batch_provider.operators.batch import results_asset
from batch_provider.task_group import llm_batch_group

DATA = os.environ.get("BATCH_EXAMPLES_DATA", f"file://{Path(__file__).resolve().parent / 'data'}")
POLL_SECONDS = float(os.environ.get("BATCH_EXAMPLES_POLL_INTERVAL", "60"))

ENRICHED_TICKETS = results_asset("nightly_ticket_enrichment", "enrich")

TICKET_CLASSIFICATION = Path(__file__).resolve().parent / "data" / "ticket_classification"
TICKET_SCHEMA = json.loads((TICKET_CLASSIFICATION / "schema.json").read_text())
PROMPT = (TICKET_CLASSIFICATION / "prompt.jinja").read_text().strip()

with DAG(
    dag_id="nightly_ticket_enrichment",
    schedule=CronDataIntervalTimetable("@daily", timezone="UTC"),
    start_date=datetime(2026, 11, 18),
    catchup=False,
    max_active_runs=1,
    tags=["llm-batch", "example"],
    doc_md="""
### Nightly ticket enrichment

Every night, the support tickets of the day that just ended
(`data/tickets/<data_interval_start>.jsonl`) are classified by an OpenAI model through the Batch
API, at half the price of synchronous calls:

* **category** (billing, technical, account, shipping, feature_request, complaint, other),
  **urgency**, **sentiment** and a one-sentence **summary**, as JSON following a response schema;
* tickets that cannot be rendered go to `rejects.jsonl`; failures the provider marks retryable
  are resubmitted up to twice; what still fails lands in `dead_letter.jsonl`;
* the results Asset triggers `ticket_enrichment_report`.

Connection: `llm_openai_default` (type *OpenAI Batch API*). Set its *Base URL* to an emulator to
run without a key. Inputs: set `BATCH_EXAMPLES_DATA` to read them from object storage instead.
""",
) as nightly:
    llm_batch_group(
        "enrich",
        provider="openai",
        conn_id="llm_openai_default",
        input_path=DATA + "/tickets/{{ data_interval_start.strftime('%Y-%m-%d') }}.jsonl",
        prompt_template=PROMPT,
        system="You are a support operations analyst. Answer only with the requested JSON.",
        model="gpt-6-luna",
        max_tokens=300,
        response_schema=TICKET_SCHEMA,
        metadata={"cost_centre": "support-ops", "pipeline": "ticket-enrichment"},
        max_attempts=3,
        timeout=timedelta(hours=25),
        poll_interval=POLL_SECONDS,
        results_asset=ENRICHED_TICKETS,
    )


with DAG(
    dag_id="ticket_enrichment_report",
    schedule=[ENRICHED_TICKETS],
    start_date=datetime(2026, 11, 18),
    catchup=False,
    tags=["llm-batch", "example"],
    doc_md="""
### Ticket enrichment report

Runs when `nightly_ticket_enrichment` publishes enriched tickets. Reads the run's `results.jsonl`
(named in the asset event) and writes `report.json` next to it: tickets per category, urgency
and sentiment, and the urgent ones to look at first.
""",
) as report_dag:

    @task(inlets=[ENRICHED_TICKETS])
    def report(triggering_asset_events=None, inlet_events=None) -> dict:
        # Scheduled runs get the event that triggered them; a manual run reports the latest one.
        events = list((triggering_asset_events or {}).get(ENRICHED_TICKETS, []))
        if not events and inlet_events is not None:
            events = list(inlet_events[ENRICHED_TICKETS])
        if not events:
            raise ValueError("no enriched tickets published yet: run nightly_ticket_enrichment first")
        extra = events[-1].extra
        results = ObjectStoragePath(extra["results"])
        categories: Counter[str] = Counter()
        urgency: Counter[str] = Counter()
        sentiment: Counter[str] = Counter()
        urgent: list[dict] = []
        with results.open("r") as fh:
            for line in fh:
                record = json.loads(line)
                answer = record.get("parsed") or json.loads(record.get("output_text") or "{}")
                categories[answer.get("category", "?")] += 1
                urgency[answer.get("urgency", "?")] += 1
                sentiment[answer.get("sentiment", "?")] += 1
                if answer.get("urgency") in ("high", "critical"):
                    urgent.append({"id": record["custom_id"], "summary": answer.get("summary")})
        summary = {
            "tickets": sum(categories.values()),
            "unresolved": extra.get("unresolved", 0),
            "by_category": dict(categories.most_common()),
            "by_urgency": dict(urgency.most_common()),
            "by_sentiment": dict(sentiment.most_common()),
            "urgent": urgent[:20],
        }
        target = ObjectStoragePath(extra["run_path"]) / "report.json"
        with target.open("w") as fh:
            fh.write(json.dumps(summary, indent=2))
        return {k: v for k, v in summary.items() if k != "urgent"} | {"report": str(target)}

    report()
