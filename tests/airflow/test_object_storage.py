"""Inputs and run folders on S3 (moto): the handle's run_path keeps the connection id, so the
wait, collect and retry tasks find the run folder from XCom alone."""

from __future__ import annotations

import json
from unittest import mock

import pytest

TICKETS = "dags/data/tickets/2026-11-20.jsonl"


@pytest.fixture
def moto_s3(monkeypatch):
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    monkeypatch.setenv(
        "AIRFLOW_CONN_MOTO",
        json.dumps(
            {
                "conn_type": "aws",
                "login": "testing",
                "password": "testing",
                "extra": {"region_name": "us-east-1", "endpoint_url": f"http://{host}:{port}"},
            }
        ),
    )
    import boto3

    s3 = boto3.client(
        "s3",
        endpoint_url=f"http://{host}:{port}",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )
    s3.create_bucket(Bucket="llm")
    from airflow_setup import REPO

    s3.upload_file(str(REPO / TICKETS), "llm", "in/tickets.jsonl")
    yield s3
    server.stop()


def context(task_id: str) -> dict:
    ti = mock.MagicMock(dag_id="s3_dag", task_id=task_id, map_index=-1)
    return {"ti": ti, "run_id": "manual__s3", "params": {}}


def test_run_on_s3(moto_s3, llm_conns):
    from batch_provider.operators import CollectBatchOperator, SubmitBatchOperator
    from batch_provider.sensors import BatchSensor

    submit = SubmitBatchOperator(
        task_id="submit",
        provider="anthropic",
        input_path="s3://moto@llm/in/tickets.jsonl",
        prompt_template="{{ subject }}",
        model="claude-haiku-4-5",
        max_tokens=32,
        run_path="s3://moto@llm/runs",
    )
    handle = submit.execute(context("submit"))
    assert handle["run_path"] == "s3://moto@llm/runs/s3_dag/manual__s3/submit"
    BatchSensor(task_id="wait", handle=handle, deferrable=False, poll_interval=0.3).execute(context("wait"))
    summary = CollectBatchOperator(task_id="collect", handle=handle).execute(context("collect"))
    assert summary["succeeded"] == 30
    keys = {o["Key"] for o in moto_s3.list_objects_v2(Bucket="llm", Prefix="runs/")["Contents"]}
    run = "runs/s3_dag/manual__s3/submit/"
    assert {run + "results.jsonl", run + "manifest.json", run + "ledger.json"} <= keys
