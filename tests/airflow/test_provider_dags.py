"""The Bedrock and Gemini example DAGs end to end with ``dag.test()`` against the emulator:
Bedrock through a plain ``aws`` connection (moto S3 beside the emulator), Gemini through an
``llm_gemini`` connection, with their batch links."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from dagutil import load_dags, read_jsonl, task_states, xcom

from batch_provider.emulator.process import EmulatorProcess, running_emulator

pytestmark = pytest.mark.usefixtures("airflow_db")

ROLE = "arn:aws:iam::123456789012:role/BedrockBatchRole"
BUCKET = "bp-airflow"
DOCUMENTS = Path(__file__).resolve().parents[2] / "dags" / "data" / "documents"


def without_results_asset(dag: Any, task_id: str) -> Any:
    """The DAG without its results Asset: the Asset's URI follows each test's run path, and one
    name seen with two URIs in the shared test DB is inactive, failing the task that emits it."""
    dag.get_task(task_id).outlets = []
    return dag


@pytest.fixture(scope="module")
def bedrock_emulator() -> Iterator[EmulatorProcess]:
    with running_emulator(time_factor=600.0, with_s3=True) as emu:
        s3 = boto3.client(
            "s3",
            endpoint_url=emu.s3_endpoint,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            config=Config(s3={"addressing_style": "path"}),
        )
        s3.create_bucket(Bucket=BUCKET)
        # the example's 30 tickets a day are under Bedrock's default 100 records per job
        emu.bedrock_settings(min_records=1)
        yield emu


@pytest.fixture
def aws_conn(bedrock_emulator, monkeypatch, run_root) -> EmulatorProcess:
    extra = {
        "region_name": "us-east-1",
        "service_config": {
            "bedrock": {"endpoint_url": bedrock_emulator.base_url},
            "s3": {"endpoint_url": bedrock_emulator.s3_endpoint},
        },
        "config_kwargs": {"s3": {"addressing_style": "path"}},
        "bedrock_role_arn": ROLE,
        "bedrock_s3_uri": f"s3://{BUCKET}/{run_root.parent.name}",
        "bedrock_min_records_per_job": "1",
    }
    conn = {"conn_type": "aws", "login": "testing", "password": "testing", "extra": extra}
    monkeypatch.setenv("AIRFLOW_CONN_AWS_BEDROCK", json.dumps(conn))
    monkeypatch.setenv("BATCH_EXAMPLES_POLL_INTERVAL", "0.3")
    return bedrock_emulator


def test_bedrock_enrichment_recovers_a_partial_failure(aws_conn, run_root):
    module = load_dags("examples/nightly_ticket_enrichment_bedrock.py")
    dag = without_results_asset(module.dag, "enrich.retry")
    submit = dag.get_task("enrich.submit")
    # job tags flow from each task's own metadata: faults on the first attempt only
    submit.metadata = {**submit.metadata, "emu_faults": "item_errors=0.3:500"}
    assert "emu_faults" not in dag.get_task("enrich.retry").metadata
    before = aws_conn.stats()["batches_created"].get("bedrock", 0)

    run = dag.test(logical_date=datetime(2026, 11, 21, tzinfo=UTC))
    states = task_states(run)
    assert str(run.state) == "success", states
    assert set(states.values()) == {"success"}

    collected = xcom(run, "enrich.collect")
    assert collected["provider"] == "bedrock" and collected["unresolved"] > 0  # the injected 500s
    final = xcom(run, "enrich.retry")
    assert final["succeeded"] == 30 and final["dead_letter"] == 0 and final["accounted"]
    assert final["attempts"] == 2
    assert final["cost"]["batch_usd"] > 0  # the Bedrock Haiku id is in the price table
    assert aws_conn.stats()["batches_created"]["bedrock"] - before == 2

    folder = Path(final["run_path"].removeprefix("file://"))
    results = read_jsonl(folder / "results.jsonl")
    assert len(results) == 30 and all(r["provider"] == "bedrock" for r in results)
    categories = {(r.get("parsed") or json.loads(r["output_text"]))["category"] for r in results}
    assert categories <= set(module.TICKET_SCHEMA["properties"]["category"]["enum"])

    job_arn = xcom(run, "enrich.submit")["batches"][0]["batch_id"]
    link = xcom(run, "enrich.submit", key="_link_BatchLink_0")
    assert link == (
        "https://console.aws.amazon.com/bedrock/home?region=us-east-1#/batch-inference/jobs/"
        + job_arn.rsplit("/", 1)[-1]
    )
    assert xcom(run, "enrich.retry", key="_link_BatchLink_0").startswith("https://console.aws.amazon.com/")


def test_gemini_document_summarisation(run_root, llm_conns, monkeypatch):
    monkeypatch.setenv("BATCH_EXAMPLES_POLL_INTERVAL", "0.3")
    dag = without_results_asset(load_dags("examples/document_summarisation_gemini.py").dag, "summarise.retry")
    run = dag.test()
    assert str(run.state) == "success", task_states(run)
    final = xcom(run, "summarise.retry")
    folder = Path(final["run_path"].removeprefix("file://"))
    results = read_jsonl(folder / "results.jsonl")
    assert sorted(r["custom_id"] for r in results) == sorted(p.stem for p in DOCUMENTS.glob("*.md"))
    assert all(r["provider"] == "gemini" and r["output_text"] for r in results)
    assert llm_conns.stats()["batches_created"]["gemini"] == 1

    batch_id = xcom(run, "summarise.submit")["batches"][0]["batch_id"]
    assert batch_id.startswith("batches/")
    link = xcom(run, "summarise.submit", key="_link_BatchLink_0")
    assert link == f"{llm_conns.base_url.rstrip('/')}/v1beta/{batch_id}"  # the emulator's own URL


def test_console_links_for_bedrock_and_gemini():
    from batch_provider.links.batch import batch_url

    arn = "arn:aws:bedrock:eu-west-1:123456789012:model-invocation-job/abc123"
    assert batch_url("bedrock", arn) == (
        "https://console.aws.amazon.com/bedrock/home?region=eu-west-1#/batch-inference/jobs/abc123"
    )
    assert batch_url("gemini", "batches/xyz") == "https://aistudio.google.com/batches/xyz"
    public = "https://generativelanguage.googleapis.com"
    assert batch_url("gemini", "batches/xyz", public) == "https://aistudio.google.com/batches/xyz"
