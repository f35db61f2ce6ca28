"""Our Vertex backend as common-ai's batch adapter: found through the entry points pyproject.toml
declares (``google-cloud:``, ``google-vertex:``, ``vertex:``), run by common-ai's own
``@task.llm_batch`` / ``LLMBatchOperator`` with ``dag.test()`` against the emulator and its GCS
emulator, every row landed once by one job per task; the same input submitted again adopts its
job; task-wide mistakes fail before any job exists."""

from __future__ import annotations

import os

os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")  # JSON-API gcsfs (no gRPC probe)

import asyncio
import json
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from airflow_setup import HOME
from dagutil import load_dags, read_jsonl, task_states, xcom

from batch_provider.emulator.process import EmulatorProcess, running_emulator

pytest.importorskip("airflow.providers.common.ai.batch", reason="common-ai is in the test extra")

from airflow.providers.common.ai.batch import dispatch
from airflow.providers.common.ai.batch.output_schema import build_output_spec
from airflow.providers.common.ai.exceptions import (
    BatchProviderNotYetSupportedError,
    LLMBatchModelMismatchError,
)

pytestmark = pytest.mark.usefixtures("airflow_db")

REPO = Path(__file__).resolve().parents[2]
GROUP = "airflow.providers.common.ai.batch_adapters"
PROJECT = "bp-common-ai-project"
REGION = "us-central1"
BUCKET = "bp-common-ai-vertex"
MODEL = "gemini-2.5-flash"
ROWS = 120
CONN = "llm_vertex_common_ai"

# common-ai finds adapters through installed distributions' entry points. A dist-info on the path
# carrying exactly what pyproject.toml declares stands in for installing this checkout.
_DECLARED = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["entry-points"][GROUP]
_DIST = HOME / "common-ai-site" / "airflow_provider_llm_batch_adapters-0.1.0.dist-info"
_DIST.mkdir(parents=True, exist_ok=True)
(_DIST / "METADATA").write_text(
    "Metadata-Version: 2.1\nName: airflow-provider-llm-batch-adapters\nVersion: 0.1.0\n"
)
(_DIST / "entry_points.txt").write_text(
    f"[{GROUP}]\n" + "".join(f"{name} = {target}\n" for name, target in _DECLARED.items())
)
if str(_DIST.parent) not in sys.path:
    sys.path.append(str(_DIST.parent))


@pytest.fixture(scope="module")
def vertex_emulator() -> Iterator[EmulatorProcess]:
    with running_emulator(time_factor=600.0, with_gcs=True) as emu:
        buckets = f"{str(emu.gcs_endpoint).rstrip('/')}/storage/v1/b"
        response = httpx.post(buckets, params={"project": PROJECT}, json={"name": BUCKET})
        assert response.status_code in (200, 409), response.text
        yield emu


def _extra(emu: EmulatorProcess, prefix: str) -> dict:
    return {
        "project": PROJECT,
        "staging_uri": f"gs://{BUCKET}/{prefix}/input",
        "output_uri": f"gs://{BUCKET}/{prefix}/output",
        "gcs_endpoint": str(emu.gcs_endpoint),
        "anonymous": True,
    }


def _llm_vertex_conn(emu: EmulatorProcess, prefix: str) -> str:
    return json.dumps(
        {"conn_type": "llm_vertex", "host": emu.base_url, "extra": {**_extra(emu, prefix), "region": REGION}}
    )


def _pydanticai_vertex_conn(emu: EmulatorProcess, prefix: str) -> str:
    """common-ai's own Vertex connection type: ``location`` and ``base_url`` in its extras."""
    extra = {**_extra(emu, prefix), "location": REGION, "base_url": emu.base_url}
    return json.dumps({"conn_type": "pydanticai_vertex", "extra": extra})


def _jobs(emu: EmulatorProcess) -> int:
    return emu.stats()["batches_created"].get("vertex", 0)


@pytest.fixture
def common_ai_env(monkeypatch, tmp_path):
    """Results under tmp_path, the row count, and common-ai's 30 s poll floor lowered so the sync
    poll loop does not sleep through the test (the emulator runs at 600× speed)."""
    monkeypatch.setattr("airflow.providers.common.ai.operators.llm_batch._MIN_POLL_INTERVAL", 0)
    monkeypatch.setenv("COMMON_AI_RESULTS", f"file://{tmp_path}/results")
    monkeypatch.setenv("COMMON_AI_ROWS", str(ROWS))
    monkeypatch.setenv("COMMON_AI_POLL", "0.3")
    return tmp_path


@pytest.fixture
def vertex_conn(vertex_emulator, monkeypatch, tmp_path) -> EmulatorProcess:
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN.upper()}", _llm_vertex_conn(vertex_emulator, tmp_path.name))
    monkeypatch.setenv(
        "AIRFLOW_CONN_PYDANTICAI_VERTEX_COMMON_AI", _pydanticai_vertex_conn(vertex_emulator, tmp_path.name)
    )
    return vertex_emulator


def _landed(manifest: dict) -> list[dict]:
    rows = read_jsonl(Path(manifest["result_uri"].removeprefix("file://")))
    assert sorted(r["index"] for r in rows) == list(range(manifest["request_count"]))  # each row once
    return rows


def test_entry_points_select_the_vertex_adapter_by_model_prefix():
    from batch_provider.integrations.common_ai.vertex import (
        GoogleVertexBatchAdapter,
        VertexAliasBatchAdapter,
        VertexBatchAdapter,
    )

    assert dispatch.get_adapter_class("llm_vertex", f"google-cloud:{MODEL}") is VertexBatchAdapter
    google_vertex = dispatch.get_adapter_class("pydanticai_vertex", f"google-vertex:{MODEL}")
    assert google_vertex is GoogleVertexBatchAdapter
    assert dispatch.get_adapter_class("llm_vertex", f"vertex:{MODEL}") is VertexAliasBatchAdapter
    with pytest.raises(BatchProviderNotYetSupportedError, match="does not support connection type"):
        dispatch.get_adapter_class("llm_gemini", f"google-cloud:{MODEL}")

    # common-ai's Vertex connection names its fields its own way; the key object is passed through
    key = {"type": "service_account", "project_id": "p"}
    conn = SimpleNamespace(
        conn_type="pydanticai_vertex",
        password=None,
        host=None,
        extra_dejson={"location": "europe-west4", "service_account_info": key, "staging_uri": "gs://b/p"},
    )
    options = VertexBatchAdapter().backend_options("c", conn)
    assert options["region"] == "europe-west4" and options["service_account_json"] == key
    assert options["staging_uri"] == "gs://b/p"


def test_llm_batch_decorator_and_operator_on_vertex_account_every_row(vertex_conn, common_ai_env):
    before = _jobs(vertex_conn)
    run = load_dags("test_dags/common_ai_vertex.py").vertex.test()
    assert str(run.state) == "success", task_states(run)

    summaries = xcom(run, "summaries")
    assert summaries["adapter"] == "google-cloud" and summaries["request_count"] == ROWS
    assert summaries["counts"] == {
        "succeeded": ROWS, "errored": 0, "invalid_output": 0, "expired": 0, "cancelled": 0, "missing": 0
    }
    # the connection id travels in the batch id, so common-ai's trigger can reach the job again
    jobs = f"{CONN}@projects/{PROJECT}/locations/{REGION}/batchPredictionJobs/"
    assert summaries["batch_id"].startswith(jobs)
    assert all(r["status"] == "success" and r["output"] for r in _landed(summaries))

    classify = xcom(run, "classify")
    assert classify["adapter"] == "google-vertex" and classify["structured"]
    assert classify["counts"]["succeeded"] + classify["counts"]["invalid_output"] == ROWS
    assert classify["counts"]["succeeded"] > 0
    for row in _landed(classify):
        if row["status"] == "success":
            assert set(row["output"]) == {"category", "urgent"} and isinstance(row["output"]["urgent"], bool)

    assert _jobs(vertex_conn) - before == 2  # one job per task


def _submit(adapter, count: int, *, key: str, fingerprint: str = "f" * 64) -> str:
    return adapter.submit(
        [{"prompt": f"p{i}"} for i in range(count)],
        model=MODEL,
        idempotency_key=key,
        input_fingerprint=fingerprint,
        output_spec=build_output_spec(str),
        max_tokens=16,
    ).batch_id


def _wait_ended(adapter, batch_id: str) -> str:
    for _ in range(200):
        status = adapter.get_batch(batch_id).status
        if status != "in_progress":
            return status
        time.sleep(0.1)
    raise AssertionError(f"{batch_id} did not end")


def test_same_input_adopts_its_vertex_job_and_a_dead_one_is_replaced(vertex_conn):
    from batch_provider.integrations.common_ai.vertex import VertexBatchAdapter

    adapter = VertexBatchAdapter(conn_id="pydanticai_vertex_common_ai")
    key = f"{time.time_ns():016x}"[-16:]
    try:
        before = _jobs(vertex_conn)
        first = _submit(adapter, 30, key=key)
        assert first.startswith("pydanticai_vertex_common_ai@projects/")
        assert _submit(adapter, 30, key=key) == first  # adopted, not created again
        assert _jobs(vertex_conn) - before == 1
        assert adapter.find_orphaned_batch(key, "f" * 64, not_before="") == first

        assert _wait_ended(adapter, first) == "completed"
        assert _submit(adapter, 30, key=key) == first  # a finished job is adopted too
        items = list(adapter.iter_results(first))
        assert sorted(item.index for item in items) == list(range(30))
        assert all(item.provider_status == "success" for item in items)

        other = _submit(adapter, 30, key=key, fingerprint="0" * 64)  # other input: its own job
        adapter.cancel_batch(other)
        assert _wait_ended(adapter, other) == "cancelled"
        replacement = _submit(adapter, 30, key=key, fingerprint="0" * 64)
        assert replacement not in (first, other)
        assert _jobs(vertex_conn) - before == 3
        assert adapter.find_orphaned_batch(key, "0" * 64, not_before="") == replacement
    finally:
        adapter.close()


def test_vertex_task_wide_mistakes_fail_before_any_job(vertex_conn, monkeypatch):
    from batch_provider.integrations.common_ai.vertex import VertexBatchAdapter

    before = _jobs(vertex_conn)
    adapter = VertexBatchAdapter(conn_id=CONN)
    try:
        with pytest.raises(LLMBatchModelMismatchError, match="runs one model per batch"):
            adapter.validate_requests(
                [{"prompt": "x"}, {"prompt": "y", "model": "google-cloud:gemini-2.5-pro"}],
                model=MODEL,
                output_spec=build_output_spec(str),
                idempotency_key="k" * 16,
            )
    finally:
        adapter.close()

    extra = json.loads(_llm_vertex_conn(vertex_conn, "x"))["extra"]
    del extra["staging_uri"]
    monkeypatch.setenv(
        "AIRFLOW_CONN_LLM_VERTEX_NO_STAGING",
        json.dumps({"conn_type": "llm_vertex", "host": vertex_conn.base_url, "extra": extra}),
    )
    adapter = VertexBatchAdapter(conn_id="llm_vertex_no_staging")
    try:
        with pytest.raises(ValueError, match="'staging_uri'"):
            adapter.validate_requests(
                [{"prompt": "x"}], model=MODEL, output_spec=build_output_spec(str), idempotency_key="k" * 16
            )
    finally:
        adapter.close()
    assert _jobs(vertex_conn) == before


def test_common_ai_trigger_polls_vertex_without_a_task_context(vertex_conn, monkeypatch):
    from airflow.providers.common.ai.triggers.llm_batch import LLMBatchTrigger

    from batch_provider.integrations.common_ai.vertex import VertexBatchAdapter

    adapter = VertexBatchAdapter(conn_id=CONN)
    try:
        batch_id = _submit(adapter, 20, key=f"{time.time_ns():016x}"[-16:])
    finally:
        adapter.close()
    trigger = LLMBatchTrigger(
        llm_conn_id=CONN,
        adapter="google-cloud",
        batch_id=batch_id,
        poll_interval=0.2,
        end_time=time.time() + 120,
        timeout=120,
        cancel_on_kill=False,
        cancel_on_timeout=False,
    )

    async def first_event():
        async for event in trigger.run():
            return event.payload

    event = asyncio.run(first_event())
    assert event["status"] == "success" and event["counts"]["succeeded"] == 20

    # an adapter built from another connection (another key) refuses to act on this batch
    other = json.loads(_llm_vertex_conn(vertex_conn, "other"))
    monkeypatch.setenv("AIRFLOW_CONN_LLM_VERTEX_OTHER", json.dumps({**other, "password": "another-key"}))
    stranger = dispatch.build_adapter("google-cloud", llm_conn_id="llm_vertex_other")
    try:
        with pytest.raises(ValueError, match="does not have the password and host"):
            stranger.get_batch(batch_id)
    finally:
        stranger.close()
