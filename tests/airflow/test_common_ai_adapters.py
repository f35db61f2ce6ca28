"""Our Bedrock and Gemini backends as common-ai batch adapters: found through the entry points
pyproject.toml declares, run by common-ai's own ``@task.llm_batch`` / ``LLMBatchOperator`` with
``dag.test()`` against the emulator (Bedrock with moto's S3), every row accounted for; common-ai's
trigger polling with no task context; never a second paid batch for the same input."""

from __future__ import annotations

import asyncio
import json
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from airflow_setup import HOME
from botocore.config import Config
from dagutil import load_dags, read_jsonl, task_states, xcom

from batch_provider.emulator.process import EmulatorProcess, running_emulator

pytest.importorskip("airflow.providers.common.ai.batch", reason="common-ai is in the test extra")

from airflow.providers.common.ai.batch import dispatch
from airflow.providers.common.ai.batch.output_schema import build_output_spec
from airflow.providers.common.ai.exceptions import (
    BatchProviderNotYetSupportedError,
    LLMBatchLimitExceededError,
)

pytestmark = pytest.mark.usefixtures("airflow_db")

REPO = Path(__file__).resolve().parents[2]
GROUP = "airflow.providers.common.ai.batch_adapters"
ROLE = "arn:aws:iam::123456789012:role/BedrockBatchRole"
BUCKET = "bp-common-ai"
CLAUDE = "anthropic.claude-haiku-4-5-20251001-v1:0"
ROWS = 120


def _declared_entry_points() -> dict[str, str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return project["entry-points"][GROUP]


# common-ai finds adapters through installed distributions' entry points. A dist-info on the path
# carrying exactly what pyproject.toml declares stands in for installing this checkout.
_DIST = HOME / "common-ai-site" / "airflow_provider_llm_batch_adapters-0.1.0.dist-info"
_DIST.mkdir(parents=True, exist_ok=True)
(_DIST / "METADATA").write_text(
    "Metadata-Version: 2.1\nName: airflow-provider-llm-batch-adapters\nVersion: 0.1.0\n"
)
(_DIST / "entry_points.txt").write_text(
    f"[{GROUP}]\n" + "".join(f"{name} = {target}\n" for name, target in _declared_entry_points().items())
)
if str(_DIST.parent) not in sys.path:
    sys.path.append(str(_DIST.parent))


@pytest.fixture(scope="module")
def bedrock_emulator() -> Iterator[EmulatorProcess]:
    with running_emulator(time_factor=600.0, with_s3=True) as emu:
        boto3.client(
            "s3",
            endpoint_url=emu.s3_endpoint,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            config=Config(s3={"addressing_style": "path"}),
        ).create_bucket(Bucket=BUCKET)
        yield emu


def _aws_conn(emu: EmulatorProcess, prefix: str, password: str = "testing") -> str:
    extra = {
        "region_name": "us-east-1",
        "service_config": {
            "bedrock": {"endpoint_url": emu.base_url},
            "s3": {"endpoint_url": emu.s3_endpoint},
        },
        "config_kwargs": {"s3": {"addressing_style": "path"}},
        "bedrock_role_arn": ROLE,
        "bedrock_s3_uri": f"s3://{BUCKET}/{prefix}",
    }
    return json.dumps({"conn_type": "aws", "login": "testing", "password": password, "extra": extra})


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
def aws_conn(bedrock_emulator, monkeypatch, tmp_path) -> EmulatorProcess:
    monkeypatch.setenv("AIRFLOW_CONN_AWS_COMMON_AI", _aws_conn(bedrock_emulator, tmp_path.name))
    return bedrock_emulator


def _landed(manifest: dict) -> list[dict]:
    rows = read_jsonl(Path(manifest["result_uri"].removeprefix("file://")))
    assert sorted(r["index"] for r in rows) == list(range(manifest["request_count"]))  # each row once
    return rows


def test_entry_points_select_our_adapters_by_model_prefix():
    from batch_provider.integrations.common_ai.bedrock import BedrockBatchAdapter
    from batch_provider.integrations.common_ai.gemini import GeminiAliasBatchAdapter, GeminiBatchAdapter

    assert set(_declared_entry_points()) == {
        "bedrock", "google", "gemini", "google-cloud", "google-vertex", "vertex"
    }
    assert dispatch.get_adapter_class("aws", f"bedrock:{CLAUDE}") is BedrockBatchAdapter
    assert dispatch.get_adapter_class("llm_gemini", "google:gemini-2.5-flash") is GeminiBatchAdapter
    assert dispatch.get_adapter_class("pydanticai", "gemini:gemini-2.5-flash") is GeminiAliasBatchAdapter
    with pytest.raises(BatchProviderNotYetSupportedError, match="does not support connection type"):
        dispatch.get_adapter_class("llm_openai", f"bedrock:{CLAUDE}")
    # a pydanticai connection's host may carry the API version; the backend adds it itself
    gemini = GeminiBatchAdapter(api_key="k", base_url="https://gemini.example/v1beta/")
    assert gemini.backend_options(None, None) == {"api_key": "k", "base_url": "https://gemini.example"}


def test_llm_batch_decorator_on_bedrock_accounts_every_row(aws_conn, common_ai_env):
    before = aws_conn.stats()["batches_created"].get("bedrock", 0)
    run = load_dags("test_dags/common_ai_batches.py").bedrock.test()
    assert str(run.state) == "success", task_states(run)

    manifest = xcom(run, "summaries")
    assert manifest["adapter"] == "bedrock" and manifest["request_count"] == ROWS
    assert manifest["counts"] == {
        "succeeded": ROWS, "errored": 0, "invalid_output": 0, "expired": 0, "cancelled": 0, "missing": 0
    }
    # the connection id travels in the batch id, so common-ai's trigger can reach the job again
    assert manifest["batch_id"].startswith("aws_common_ai@arn:aws:bedrock:us-east-1:")
    rows = _landed(manifest)
    assert all(r["status"] == "success" and r["output"] for r in rows)
    assert aws_conn.stats()["batches_created"]["bedrock"] - before == 1


def test_llm_batch_operator_on_gemini_with_structured_output(llm_conns, common_ai_env):
    run = load_dags("test_dags/common_ai_batches.py").gemini.test()
    assert str(run.state) == "success", task_states(run)
    manifest = xcom(run, "classify")
    assert manifest["adapter"] == "google" and manifest["structured"]
    assert manifest["counts"]["succeeded"] + manifest["counts"]["invalid_output"] == ROWS
    assert manifest["counts"]["succeeded"] > 0
    rows = _landed(manifest)
    for row in rows:
        if row["status"] == "success":
            assert set(row["output"]) == {"category", "urgent"} and isinstance(row["output"]["urgent"], bool)
    assert llm_conns.stats()["batches_created"]["gemini"] == 1


def _bedrock_adapter(conn_id: str = "aws_common_ai"):
    from batch_provider.integrations.common_ai.bedrock import BedrockBatchAdapter

    return BedrockBatchAdapter(conn_id=conn_id)


def _submit(adapter, count: int, *, key: str = "k" * 16, fingerprint: str = "f" * 64) -> str:
    return adapter.submit(
        [{"prompt": f"p{i}"} for i in range(count)],
        model=CLAUDE,
        idempotency_key=key,
        input_fingerprint=fingerprint,
        output_spec=build_output_spec(str),
        max_tokens=16,
    ).batch_id


def test_same_input_is_never_paid_twice_and_a_dead_batch_is_replaced(aws_conn):
    adapter = _bedrock_adapter()
    key = f"{time.time_ns():016x}"[-16:]
    try:
        before = aws_conn.stats()["batches_created"].get("bedrock", 0)
        first = _submit(adapter, 100, key=key)
        assert _submit(adapter, 100, key=key) == first  # adopted, not created again
        assert aws_conn.stats()["batches_created"]["bedrock"] - before == 1
        assert adapter.find_orphaned_batch(key, "f" * 64, not_before="") == first

        adapter.cancel_batch(first)  # common-ai clears its state after a lossy cancel and resubmits
        for _ in range(100):
            if adapter.get_batch(first).status != "in_progress":
                break
            time.sleep(0.1)
        second = _submit(adapter, 100, key=key)
        assert second != first
        assert aws_conn.stats()["batches_created"]["bedrock"] - before == 2
        assert adapter.find_orphaned_batch(key, "f" * 64, not_before="") == second
        assert adapter.find_orphaned_batch(key, "0" * 64, not_before="") is None  # other input
    finally:
        adapter.close()


def test_bedrock_task_wide_mistakes_fail_before_any_job(aws_conn):
    adapter = _bedrock_adapter()
    before = aws_conn.stats()["batches_created"].get("bedrock", 0)
    try:
        with pytest.raises(LLMBatchLimitExceededError, match="at least 100 requests, this one has 5"):
            adapter.validate_requests(
                [{"prompt": "x"}] * 5,
                model=CLAUDE,
                output_spec=build_output_spec(str),
                idempotency_key="k" * 16,
            )
        with pytest.raises(Exception, match="runs one model per batch"):
            adapter.validate_requests(
                [{"prompt": "x"}, {"prompt": "y", "model": "bedrock:amazon.nova-lite-v1:0"}] * 60,
                model=CLAUDE,
                output_spec=build_output_spec(str),
                idempotency_key="k" * 16,
            )
    finally:
        adapter.close()
    assert aws_conn.stats()["batches_created"].get("bedrock", 0) == before


def test_common_ai_trigger_polls_bedrock_without_a_task_context(aws_conn, monkeypatch):
    from airflow.providers.common.ai.triggers.llm_batch import LLMBatchTrigger

    adapter = _bedrock_adapter()
    try:
        batch_id = _submit(adapter, 100, key=f"{time.time_ns():016x}"[-16:])
    finally:
        adapter.close()
    trigger = LLMBatchTrigger(
        llm_conn_id="aws_common_ai",
        adapter="bedrock",
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
    assert event["status"] == "success" and event["counts"]["succeeded"] == 100

    # an adapter built from another connection refuses to act on this batch
    monkeypatch.setenv("AIRFLOW_CONN_AWS_OTHER", _aws_conn(aws_conn, "other", password="another-secret"))
    other = dispatch.build_adapter("bedrock", llm_conn_id="aws_other")
    try:
        with pytest.raises(ValueError, match="does not have the password and host"):
            other.get_batch(batch_id)
    finally:
        other.close()
