"""Summaries of a folder of documents with Anthropic's Message Batches API."""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from pathlib import Path

from airflow.sdk import DAG

from batch_provider.operators.batch import results_asset
from batch_provider.task_group import llm_batch_group

DATA = os.environ.get("BATCH_EXAMPLES_DATA", f"file://{Path(__file__).resolve().parent / 'data'}")
POLL_SECONDS = float(os.environ.get("BATCH_EXAMPLES_POLL_INTERVAL", "60"))

DOCUMENT_SUMMARIES = results_asset("document_summarisation", "summarise")

with DAG(
    dag_id="document_summarisation",
    schedule=None,
    start_date=datetime(2026, 11, 1),
    catchup=False,
    tags=["llm-batch", "example"],
    doc_md="""
### Document summarisation

Summarises every Markdown document in `data/documents/` with Claude through the Anthropic
Message Batches API: one request per document (its file name is the request id), a
five-sentence summary plus the decisions or actions it contains.

Results land in the run folder's `results.jsonl` and are published as the
`llm_batch_results__document_summarisation__summarise__<location>` Asset for downstream DAGs.

Connection: `llm_anthropic_default` (type *Anthropic Message Batches API*).
""",
) as dag:
    llm_batch_group(
        "summarise",
        provider="anthropic",
        conn_id="llm_anthropic_default",
        input_path=DATA + "/documents",
        prompt_template=(
            "Summarise the document below in at most five sentences for a busy executive, then list "
            "any decisions requested or actions agreed, one per line.\n\n"
            '<document name="{{ name }}">\n{{ text }}\n</document>'
        ),
        system="You write precise, neutral summaries. Never invent facts that are not in the document.",
        model="claude-sonnet-5-5",
        max_tokens=400,
        metadata={"cost_centre": "strategy"},
        max_attempts=2,
        timeout=timedelta(hours=25),
        poll_interval=POLL_SECONDS,
        results_asset=DOCUMENT_SUMMARIES,
    )
