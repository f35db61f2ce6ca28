"""A sync fallback at a set time, through a real DAG run (``dag.test()``): the wait ends at
``sync_fallback_at`` and cancels the batch, collect keeps its answers, and the retry task sends
the rest to the emulator's synchronous endpoint under a rate limit, each row once; nothing is
resubmitted in a batch and the manifest counts and prices both parts. On OpenAI, and on Bedrock
(jobs stopped, the tail sent to Bedrock Runtime ``InvokeModel``)."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from airflow_setup import emulator_connections
from dagutil import load_dags, read_jsonl, task_states

from batch_provider.emulator.process import running_emulator

pytestmark = pytest.mark.usefixtures("airflow_db")


@pytest.fixture
def slow_batches(monkeypatch, run_root):
    """Requests finish one per emulated 600 s (10 s real): at the fallback, 15 s after submit, a
    few of the 16 at most are answered. The synchronous endpoints take 3 calls a
    second per key."""
    args = ["--processing-seconds", "0", "--per-request-seconds", "600", "--set", "sync_rpm=3"]
    args += ["--set", "sync_window_seconds=1"]
    with running_emulator(time_factor=60, extra_args=args) as emu:
        for name, value in emulator_connections(emu.base_url).items():
            monkeypatch.setenv(name, value)
        yield emu


def test_fallback_at_a_set_time_finishes_the_long_tail_through_the_sync_api(slow_batches, run_root):
    run = load_dags("test_dags/sync_fallback_runs.py").tail.test()
    states = task_states(run)
    assert str(run.state) == "success", states
    (folder,) = list((run_root / "sync_fallback_tail").glob("*/tickets"))
    results = read_jsonl(folder / "results.jsonl")
    assert sorted(Counter(r["custom_id"] for r in results).items()) == [(f"t-{i:02d}", 1) for i in range(16)]
    assert read_jsonl(folder / "dead_letter.jsonl") == []
    by_sync = [r for r in results if r["batch_id"] == "sync"]
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["deadline_passed"] == [1]
    assert manifest["finished_by"] == {"batch": 16 - len(by_sync), "sync": len(by_sync), "cache": 0}
    assert len(by_sync) > 3, "the batch was not cut off: the fallback found little to do"
    sync = slow_batches.sync_settings()
    assert sync["served"] == len(by_sync) and sync["max_per_body"] == 1  # no row sent twice
    assert sync["limited"] > 0  # the rate limit was met and honoured
    assert slow_batches.stats()["batches_created"]["openai"] == 1  # the tail was not resubmitted
    fallback = manifest["sync_fallback"]
    assert fallback["answered"] == len(by_sync) and fallback["extra_cost_usd"] > 0
    batches_usd = sum(b["cost"]["batch_usd"] for b in manifest["batches"])
    assert manifest["cost"]["batch_usd"] == pytest.approx(batches_usd + fallback["cost_usd"], abs=1e-6)


@pytest.fixture
def slow_bedrock_jobs(monkeypatch, run_root):
    """As ``slow_batches`` for Bedrock jobs (which start 95 emulated seconds after submit, 1.6 s
    real), with moto's S3 and an ``aws`` connection pointing bedrock, bedrock-runtime and S3 at
    the emulator."""
    import boto3
    from botocore.config import Config

    args = ["--processing-seconds", "0", "--per-request-seconds", "600", "--set", "sync_rpm=3"]
    args += ["--set", "sync_window_seconds=1"]
    with running_emulator(time_factor=60, extra_args=args, with_s3=True) as emu:
        boto3.client(
            "s3",
            endpoint_url=emu.s3_endpoint,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            config=Config(s3={"addressing_style": "path"}),
        ).create_bucket(Bucket="bp-sync-fallback")
        emu.bedrock_settings(min_records=1)
        extra = {
            "region_name": "us-east-1",
            "service_config": {
                "bedrock": {"endpoint_url": emu.base_url},
                "bedrock-runtime": {"endpoint_url": emu.base_url},
                "s3": {"endpoint_url": emu.s3_endpoint},
            },
            "config_kwargs": {"s3": {"addressing_style": "path"}},
            "bedrock_role_arn": "arn:aws:iam::123456789012:role/BedrockBatchRole",
            "bedrock_s3_uri": f"s3://bp-sync-fallback/{run_root.parent.name}",
            "bedrock_min_records_per_job": "1",
        }
        conn = {"conn_type": "aws", "login": "testing", "password": "testing", "extra": extra}
        monkeypatch.setenv("AIRFLOW_CONN_AWS_SYNC_FALLBACK", json.dumps(conn))
        yield emu


def test_bedrock_fallback_at_a_set_time_sends_the_tail_to_invoke_model(slow_bedrock_jobs, run_root):
    run = load_dags("test_dags/sync_fallback_runs.py").bedrock_tail.test()
    states = task_states(run)
    assert str(run.state) == "success", states
    (folder,) = list((run_root / "sync_fallback_tail_bedrock").glob("*/tickets"))
    results = read_jsonl(folder / "results.jsonl")
    assert sorted(Counter(r["custom_id"] for r in results).items()) == [(f"t-{i:02d}", 1) for i in range(16)]
    assert read_jsonl(folder / "dead_letter.jsonl") == []
    by_sync = [r for r in results if r["batch_id"] == "sync"]
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["deadline_passed"] == [1]
    assert manifest["finished_by"] == {"batch": 16 - len(by_sync), "sync": len(by_sync), "cache": 0}
    assert len(by_sync) > 3, "the job was not cut off: the fallback found little to do"
    assert all(r["provider"] == "bedrock" and r["output_text"] for r in by_sync)
    sync = slow_bedrock_jobs.sync_settings()
    assert sync["served"] == len(by_sync) and sync["max_per_body"] == 1  # no row sent twice
    assert sync["limited"] > 0  # the rate limit was met and honoured
    assert slow_bedrock_jobs.stats()["batches_created"]["bedrock"] == 1  # the tail was not resubmitted
    fallback = manifest["sync_fallback"]
    assert fallback["answered"] == len(by_sync) and fallback["extra_cost_usd"] > 0
    batches_usd = sum(b["cost"]["batch_usd"] for b in manifest["batches"])
    assert manifest["cost"]["batch_usd"] == pytest.approx(batches_usd + fallback["cost_usd"], abs=1e-6)
