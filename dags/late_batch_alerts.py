"""A nightly run that says so when its batch runs late: an overdue alert from the wait, and a
DAG-level Deadline Alert that reports each batch's progress and ETA.

- The wait expects each batch to end within the completion-time history's p95 × 1.5 for batches
  of its size (``expected_within`` overrides that); a batch still running then is reported once:
  a warning in the task log, the ``batches_overdue`` metric and ``on_overdue`` (an Airflow
  notifier, e.g. ``SlackNotifier(...)``, or any callable taking the context). The wait goes on,
  deferred. The retry task reports an attempt it resubmits the same way.
- ``deadline=DeadlineAlert(...)`` (Airflow ≥ 3.1): if the DAG run is not done 6 hours after it
  was queued, :func:`batch_provider.callbacks.report_batch_progress` runs in the triggerer and
  reports every batch of the run: status, requests done, time running, ETA.
"""

from __future__ import annotations

import logging
import os
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from airflow.sdk import DAG, AsyncCallback, DeadlineAlert, DeadlineReference

from batch_provider.callbacks import report_batch_progress
from batch_provider.task_group import llm_batch_group

DATA = os.environ.get("BATCH_EXAMPLES_DATA", f"file://{Path(__file__).resolve().parent / 'data'}")
POLL_SECONDS = float(os.environ.get("BATCH_EXAMPLES_POLL_INTERVAL", "60"))
EXPECTED_WITHIN = os.environ.get("BATCH_EXAMPLES_EXPECTED_WITHIN")
"""Seconds; unset: the history's p95 × 1.5 (and no alert until there is history)."""

log = logging.getLogger(__name__)


def warn_on_call(context: dict[str, Any]) -> None:
    """``on_overdue``: any callable taking the context works; ``batch_overdue`` says what is late."""
    log.warning("Tonight's ticket batch is late: %s", context["batch_overdue"]["message"])


with DAG(
    dag_id="late_batch_alerts",
    schedule="0 1 * * *",
    start_date=datetime(2026, 11, 1),
    catchup=False,
    tags=["llm-batch", "example"],
    deadline=DeadlineAlert(
        reference=DeadlineReference.DAGRUN_QUEUED_AT,
        interval=timedelta(hours=6),
        callback=AsyncCallback(report_batch_progress, kwargs={"conn_id": "llm_openai_default"}),
    ),
    doc_md=__doc__,
) as dag:
    llm_batch_group(
        "tickets",
        provider="openai",
        input_path=DATA + "/tickets/{{ data_interval_start.strftime('%Y-%m-%d') }}.jsonl",
        prompt_template="Summarise this ticket in one sentence:\n{{ subject }}\n{{ body }}",
        model="gpt-6-luna",
        max_tokens=128,
        poll_interval=POLL_SECONDS,
        max_poll_interval=max(POLL_SECONDS, 300.0),
        expected_within=float(EXPECTED_WITHIN) if EXPECTED_WITHIN else None,
        overdue_factor=1.5,
        on_overdue=warn_on_call,
    )
