"""Storage faults on the wire (S3 behind a proxy that answers 500 to chosen requests), through
real DAG runs: an optional part (the result cache) never fails the run, and a collect or retry
whose write failed is retried by Airflow and lands the same files, counted once."""

from __future__ import annotations

import json

import pytest
from dagutil import load_dags, task_states
from moto_support import aws_connection, moto_s3
from s3_fault_proxy import Rule, fault_proxy

from batch_provider.core.cache import ResultCache

pytestmark = pytest.mark.usefixtures("airflow_db")


@pytest.fixture
def moto(monkeypatch, llm_conns):
    monkeypatch.setattr(ResultCache, "store_backoff", 0.05)
    with moto_s3("llm") as (s3, endpoint):
        host, port = endpoint.removeprefix("http://").split(":")
        yield s3, (host, int(port))


def s3_connection(monkeypatch, dag_id: str, endpoint: str) -> None:
    """The DAG's S3 connection, through ``endpoint``; botocore retries once, then the caller's
    own policy (the cache's backoff, the task's Airflow retries) takes over."""
    retries = {"retries": {"total_max_attempts": 2, "mode": "standard"}}
    monkeypatch.setenv(f"AIRFLOW_CONN_BP_{dag_id.upper()}", aws_connection(endpoint, config_kwargs=retries))


def objects(s3, prefix: str) -> dict[str, bytes]:
    listed = s3.list_objects_v2(Bucket="llm", Prefix=prefix).get("Contents", [])
    return {o["Key"]: s3.get_object(Bucket="llm", Key=o["Key"])["Body"].read() for o in listed}


def lines(body: bytes) -> list[dict]:
    return [json.loads(line) for line in body.splitlines() if line.strip()]


def test_failing_cache_writes_leave_a_green_run_and_say_so(moto, monkeypatch):
    s3, upstream = moto
    # moto keeps one store per process: another test's cache entries may already be there.
    cached_before = objects(s3, "runs/_cache/")
    with fault_proxy(upstream, [Rule("PUT", "/runs/_cache/")]) as proxy:
        s3_connection(monkeypatch, "s3_cache_faults", proxy.url)
        run = load_dags("test_dags/storage_faults.py").s3_cache_faults.test()
    states = task_states(run)
    assert str(run.state) == "success" and set(states.values()) == {"success"}, states
    assert proxy.rules[0].hits >= 2 * (ResultCache.store_retries + 1)  # botocore's try, then ours
    run_files = objects(s3, "runs/s3_cache_faults/")
    (manifest_key,) = [k for k in run_files if k.endswith("tickets/manifest.json")]
    manifest = json.loads(run_files[manifest_key])
    assert manifest["cache_entries_not_stored"] == 10 and manifest["succeeded"] == 10
    results = run_files[manifest_key.replace("manifest.json", "results.jsonl")]
    assert len(lines(results)) == 10
    assert objects(s3, "runs/_cache/") == cached_before  # nothing of this run was cached


def test_a_failed_write_is_retried_by_airflow_and_counted_once(moto, monkeypatch):
    s3, upstream = moto
    rules = [Rule("PUT", "/tickets/results.jsonl", times=2), Rule("PUT", "/dead_letter.jsonl", times=2)]
    with fault_proxy(upstream, rules) as proxy:
        s3_connection(monkeypatch, "s3_write_faults", proxy.url)
        run = load_dags("test_dags/storage_faults.py").s3_write_faults.test()
    states = task_states(run)
    assert str(run.state) == "success" and set(states.values()) == {"success"}, states
    assert [rule.hits for rule in proxy.rules] == [2, 2]  # each write failed once (botocore tried twice)
    run_files = objects(s3, "runs/s3_write_faults/")
    (manifest_key,) = [k for k in run_files if k.endswith("tickets/manifest.json")]
    manifest = json.loads(run_files[manifest_key])
    assert manifest["succeeded"] == 10 and manifest["accounted"] and manifest["finished"]
    assert manifest["cache_entries_not_stored"] == 0
    folder = manifest_key.removesuffix("manifest.json")
    assert len(lines(run_files[folder + "results.jsonl"])) == 10
    assert folder + "attempt-1/results.jsonl" not in run_files  # the answers are kept once
    assert run_files[folder + "dead_letter.jsonl"] == b""
    history = json.loads(run_files["runs/s3_write_faults/_calibration.json"])
    assert [m["requests"] for m in history["models"].values()] == [10]  # not 20: counted once
    assert not [k for k in run_files if ".tmp" in k]
