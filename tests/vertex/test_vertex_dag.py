"""The Vertex example DAG end to end with ``dag.test()`` against the emulator and its GCS: a
partial failure recovered by the retry task, and a submit SIGKILLed after its job was created
that the next run of the same DAG run re-attaches to (one job per chunk)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

AIRFLOW_TESTS = Path(__file__).resolve().parents[1] / "airflow"
if str(AIRFLOW_TESTS) not in sys.path:
    sys.path.insert(0, str(AIRFLOW_TESTS))

from airflow_setup import AIRFLOW_ENV  # noqa: E402  (sets the Airflow environment before airflow loads)
from backend_support import BUCKET, PROJECT, REGION, listed_jobs, make_bucket  # noqa: E402
from dagutil import load_dags, read_jsonl, task_states, xcom  # noqa: E402

from batch_provider.emulator.process import EmulatorProcess, running_emulator  # noqa: E402

CHILD = Path(__file__).with_name("vertex_dag_child.py")
DOCUMENTS = Path(__file__).resolve().parents[2] / "dags" / "data" / "documents"
DAG_FILE = "examples/document_summarisation_vertex.py"


@pytest.fixture(scope="module")
def airflow_db() -> None:
    subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"],
        check=True,
        env={**os.environ, **AIRFLOW_ENV},
        capture_output=True,
    )


@pytest.fixture(scope="module")
def dag_emulator() -> Iterator[EmulatorProcess]:
    with running_emulator(time_factor=600.0, with_gcs=True) as emu:
        make_bucket(emu)
        yield emu


@pytest.fixture
def vertex_conn(dag_emulator: EmulatorProcess, airflow_db: None, tmp_path: Path, monkeypatch: Any) -> Any:
    """``llm_vertex_default`` on the emulator (anonymous), a fresh run path, fast polling."""
    conn = {
        "conn_type": "llm_vertex",
        "host": dag_emulator.base_url,
        "extra": {
            "project": PROJECT,
            "region": REGION,
            "staging_uri": f"gs://{BUCKET}/dags/{tmp_path.name}/input",
            "output_uri": f"gs://{BUCKET}/dags/{tmp_path.name}/output",
            "gcs_endpoint": dag_emulator.gcs_endpoint,
            "anonymous": True,
        },
    }
    monkeypatch.setenv("AIRFLOW_CONN_LLM_VERTEX_DEFAULT", json.dumps(conn))
    monkeypatch.setenv("BATCH_PROVIDER_RUN_PATH", f"file://{tmp_path / 'runs'}")
    monkeypatch.setenv("BATCH_EXAMPLES_POLL_INTERVAL", "0.3")
    yield dag_emulator
    dag_emulator.clear_faults()


def vertex_dag() -> Any:
    """The example DAG without its results Asset (its URI follows each test's run path)."""
    dag = load_dags(DAG_FILE).dag
    dag.get_task("summarise.retry").outlets = []
    return dag


def jobs_of(emu: Any, staging: str) -> list[dict[str, Any]]:
    """Jobs whose input was staged under ``staging`` (one test's prefix)."""
    return [
        job
        for job in listed_jobs(emu)
        if any(uri.startswith(staging) for uri in job["inputConfig"]["gcsSource"]["uris"])
    ]


def staging(tmp_path: Path) -> str:
    return f"gs://{BUCKET}/dags/{tmp_path.name}/input/"


def test_partial_failure_is_recovered_by_the_retry_task(vertex_conn: Any, tmp_path: Path) -> None:
    # every new job fails half its rows with a transient 500; a resent row succeeds
    vertex_conn.set_faults({"batch_faults": "item_errors=0.5:500", "item_recovery": 1.0})
    run = vertex_dag().test()
    assert str(run.state) == "success", task_states(run)
    collected = xcom(run, "summarise.collect")
    assert collected["retryable"] > 0 and collected["provider"] == "vertex", collected  # attempt 1 failed
    final = xcom(run, "summarise.retry")
    folder = Path(final["run_path"].removeprefix("file://"))
    results = read_jsonl(folder / "results.jsonl")
    assert sorted(r["custom_id"] for r in results) == sorted(p.stem for p in DOCUMENTS.glob("*.md"))
    assert all(r["provider"] == "vertex" and r["output_text"] for r in results)
    assert {r["attempt"] for r in results} == {1, 2}
    assert read_jsonl(folder / "errors.jsonl") == [] and read_jsonl(folder / "dead_letter.jsonl") == []
    assert len(jobs_of(vertex_conn, staging(tmp_path))) == 2  # the first attempt and one retry
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["accounted"] is True

    job = xcom(run, "summarise.submit")["batches"][0]["batch_id"]
    assert xcom(run, "summarise.submit", key="_link_BatchLink_0") == f"{vertex_conn.base_url}/v1/{job}"


def test_a_submit_killed_after_creating_its_job_reattaches_on_the_next_try(
    vertex_conn: Any, tmp_path: Path
) -> None:
    when = datetime(2026, 11, 20, 6, 0, tzinfo=UTC)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(AIRFLOW_TESTS), AIRFLOW_ENV["PYTHONPATH"]])}
    crashed = subprocess.run(
        [sys.executable, str(CHILD), when.isoformat()], capture_output=True, text=True, timeout=300, env=env
    )
    assert crashed.returncode == -9, crashed.stderr[-3000:]
    created = jobs_of(vertex_conn, staging(tmp_path))
    assert len(created) == 1, "the killed submit created its job"

    run = vertex_dag().test(logical_date=when, run_after=when)  # the same DAG run, tried again
    assert str(run.state) == "success", task_states(run)
    assert [job["name"] for job in jobs_of(vertex_conn, staging(tmp_path))] == [created[0]["name"]]
    assert xcom(run, "summarise.submit")["batches"][0]["batch_id"] == created[0]["name"]
    folder = Path(xcom(run, "summarise.retry")["run_path"].removeprefix("file://"))
    results = read_jsonl(folder / "results.jsonl")
    assert sorted(r["custom_id"] for r in results) == sorted(p.stem for p in DOCUMENTS.glob("*.md"))


async def test_the_hook_builds_a_vertex_backend_from_the_connection(
    vertex_conn: Any, monkeypatch: Any
) -> None:
    from batch_provider.backends.vertex import VertexBackend
    from batch_provider.hooks.batch import LLMBatchHook, VertexBatchHook

    hook = LLMBatchHook(conn_id="llm_vertex_default")
    assert hook.get_provider().value == "vertex" and VertexBatchHook().conn_id == "llm_vertex_default"
    assert hook.test_connection() == (True, "llm_vertex connection has a gs:// staging location")
    async with await hook.aget_backend() as backend:
        assert isinstance(backend, VertexBackend)
        assert (backend.project, backend.region) == (PROJECT, REGION)
        assert backend.staging_uri.startswith(f"gs://{BUCKET}/dags/")

    monkeypatch.setenv(
        "AIRFLOW_CONN_LLM_VERTEX_BARE", json.dumps({"conn_type": "llm_vertex", "extra": {"project": "p"}})
    )
    ok, message = LLMBatchHook(conn_id="llm_vertex_bare").test_connection()
    assert not ok and "staging_uri" in message
