"""Summaries of a folder of documents with Vertex AI batch prediction."""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from pathlib import Path

from airflow.sdk import DAG

from batch_provider.operators.batch import results_asset
from batch_provider.task_group import llm_batch_group

DATA = os.environ.get("BATCH_EXAMPLES_DATA", f"file://{Path(__file__).resolve().parent / 'data'}")
POLL_SECONDS = float(os.environ.get("BATCH_EXAMPLES_POLL_INTERVAL", "60"))

DOCUMENT_SUMMARIES_VERTEX = results_asset("document_summarisation_vertex", "summarise")

with DAG(
    dag_id="document_summarisation_vertex",
    schedule=None,
    start_date=datetime(2026, 11, 1),
    catchup=False,
    tags=["llm-batch", "example", "vertex"],
    doc_md="""
### Document summarisation (Vertex AI)

Summarises every Markdown document in `data/documents/` through Vertex AI batch prediction: one
request per document (its file name is the request id), a five-sentence summary plus the
decisions or actions it contains. The requests are staged as JSONL in Cloud Storage, one
`batchPredictionJob` reads them and writes its predictions beside them; rows that fail for a
transient reason are sent again once.

Connection: `llm_vertex_default` (type *Vertex AI Batch Prediction*): a service-account key in the
password (empty: Application Default Credentials) and the `project`, `region` and `staging_uri`
(`gs://bucket/prefix`) extras. Needs the `[vertex]` extra.
""",
) as dag:
    llm_batch_group(
        "summarise",
        provider="vertex",
        conn_id="llm_vertex_default",
        input_path=DATA + "/documents",
        prompt_template=(
            "Summarise the document below in at most five sentences for a busy executive, then list "
            "any decisions requested or actions agreed, one per line.\n\n"
            '<document name="{{ name }}">\n{{ text }}\n</document>'
        ),
        system="You write precise, neutral summaries. Never invent facts that are not in the document.",
        model="gemini-2.5-flash",
        max_tokens=400,
        metadata={"cost_centre": "strategy"},
        max_attempts=2,
        timeout=timedelta(hours=25),
        poll_interval=POLL_SECONDS,
        results_asset=DOCUMENT_SUMMARIES_VERTEX,
    )
