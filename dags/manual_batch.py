"""A batch run started by hand from the UI, with its settings in a validated Params form."""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from pathlib import Path

from airflow.sdk import DAG, Param

from batch_provider.task_group import llm_batch_group

DATA = os.environ.get("BATCH_EXAMPLES_DATA", f"file://{Path(__file__).resolve().parent / 'data'}")
POLL_SECONDS = float(os.environ.get("BATCH_EXAMPLES_POLL_INTERVAL", "60"))

with DAG(
    dag_id="manual_batch",
    schedule=None,
    start_date=datetime(2026, 11, 1),
    catchup=False,
    tags=["llm-batch", "example"],
    params={
        "provider": Param(
            "openai",
            type="string",
            enum=["openai", "anthropic", "openai_compatible"],
            title="Provider",
            description="Which Batch API to use; its default connection (llm_<provider>_default) is used.",
        ),
        "model": Param("gpt-6-luna", type="string", minLength=1, title="Model"),
        "input_path": Param(
            DATA + "/tickets/2026-11-20.jsonl",
            type="string",
            pattern=r"^[a-z0-9+.-]+://.+",
            title="Input path",
            description="JSONL, CSV or Parquet file (or a folder of them / of .md documents), "
            "as a URL: file:///..., s3://conn_id@bucket/key ...",
        ),
        "prompt": Param(
            "Summarise this ticket in one sentence:\n{{ subject }}\n{{ body }}",
            type="string",
            format="multiline",
            minLength=1,
            title="Prompt template",
            description="Jinja over each input row's columns, e.g. {{ subject }}.",
        ),
        "max_tokens": Param(256, type="integer", minimum=1, maximum=8192, title="Max output tokens"),
        "max_attempts": Param(3, type="integer", minimum=1, maximum=5, title="Max attempts"),
    },
    doc_md="""
### Manual batch

Trigger with the form: pick the provider (validated against the list of supported ones), the
model, an input file or folder, a Jinja prompt over the input's columns, the output-token limit
and how many attempts failed requests get. The run writes its results, errors, rejects and dead
letter file into its own folder under the configured run path.
""",
    render_template_as_native_obj=False,
) as dag:
    llm_batch_group(
        "batch",
        provider="{{ params.provider }}",
        input_path="{{ params.input_path }}",
        prompt_template_param="prompt",
        model="{{ params.model }}",
        max_tokens="{{ params.max_tokens }}",
        max_attempts="{{ params.max_attempts }}",
        timeout=timedelta(hours=25),
        poll_interval=POLL_SECONDS,
    )
