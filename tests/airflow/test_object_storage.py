"""Inputs and run folders on S3 (moto): the handle's run_path keeps the connection id, so the
wait, collect and retry tasks find the run folder from XCom alone."""

from __future__ import annotations

import json
import os
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
    assert handle["cache_path"] == "s3://moto@llm/runs/_cache"
    body = moto_s3.get_object(Bucket="llm", Key=run + "attempt-1/cache_keys.jsonl")["Body"].read()
    wanted = {json.loads(line)["key"] for line in body.splitlines()}
    from airflow.sdk import ObjectStoragePath

    from batch_provider.core.cache import ResultCache

    cached = ResultCache(ObjectStoragePath("s3://moto@llm/runs/_cache")).get_many(wanted)
    assert len(wanted) == 19 and set(cached) == wanted, "collect stores into the cache submit used"
    cache_objects = sorted(k.split("/")[2] for k in keys if k.startswith("runs/_cache/"))
    assert cache_objects == ["indexes", "segments"], "one segment and its index for the one batch"


def test_result_cache_blocks_on_s3(moto_s3, monkeypatch):
    """Blocks of entries larger than one fetch go to S3 as one segment and come back; misses,
    errored records and malformed entries of the older per-entry layout are absent, never errors."""
    from airflow.sdk import ObjectStoragePath

    from batch_provider.core.cache import ResultCache
    from batch_provider.core.models import ItemStatus, ResultError, ResultRecord

    # A connection of its own: Airflow keeps one filesystem per connection id for the process.
    monkeypatch.setenv("AIRFLOW_CONN_MOTO_CACHE", os.environ["AIRFLOW_CONN_MOTO"])
    cache = ResultCache(ObjectStoragePath("s3://moto_cache@llm/cache"))
    stored = {
        f"{i:064x}": ResultRecord(custom_id=f"r{i}", status=ItemStatus.SUCCEEDED, output_text=f"answer {i}")
        for i in range(600)
    }
    errored = ResultRecord(
        custom_id="bad",
        status=ItemStatus.ERRORED,
        error=ResultError(type="server_error", message="boom", retryable=True),
    )
    cache.put_many([*stored.items(), (f"{999_999:064x}", errored)])
    moto_s3.put_object(Bucket="llm", Key=f"cache/ab/{'ab' * 32}.json", Body=b'{"stored_at": "cut sh')
    wanted = [*stored, f"{999_999:064x}", f"{123_456_789:064x}", "ab" * 32]
    found = cache.get_many(wanted)
    assert set(found) == set(stored)
    assert all(found[key].output_text == record.output_text for key, record in stored.items())
    listed = moto_s3.list_objects_v2(Bucket="llm", Prefix="cache/", MaxKeys=1000)["KeyCount"]
    assert listed == 3  # one segment, its index and the malformed entry; the errored record is not stored
