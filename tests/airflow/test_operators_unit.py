"""Operators and the sensor alone: deferral, resume, links, handle resolution."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from unittest import mock

import pytest
from airflow.sdk.exceptions import AirflowException, AirflowSensorTimeout, TaskDeferred
from airflow_fakes import ScriptedBackend
from airflow_setup import API_KEY, conn_json

from batch_provider.core.handle import RunHandle
from batch_provider.core.models import BatchRef
from batch_provider.links.batch import BatchLink, batch_url
from batch_provider.operators import CollectBatchOperator, RetryBatchOperator, SubmitBatchOperator
from batch_provider.operators._common import parse_handle
from batch_provider.sensors import BatchSensor
from batch_provider.triggers.batch import BatchWaitTrigger


@pytest.fixture
def scripted(monkeypatch):
    options: dict = {}
    ScriptedBackend.instances.clear()
    monkeypatch.setattr(
        "batch_provider.hooks.batch.create_backend", lambda provider, **kw: ScriptedBackend(**kw, **options)
    )
    monkeypatch.setenv("AIRFLOW_CONN_LLM_OPENAI_DEFAULT", conn_json("llm_openai", "http://127.0.0.1:9/v1"))
    return options


def handle(batch_ids=("b1", "b2"), run_path="file:///tmp/bp-test/run") -> RunHandle:
    return RunHandle(
        run_path=run_path,
        provider="openai",
        conn_id="llm_openai_default",
        batches=[
            BatchRef(
                provider="openai", batch_id=b, chunk_index=i, request_count=5, created_at=datetime.now(UTC)
            )
            for i, b in enumerate(batch_ids)
        ],
    )


def context() -> dict:
    ti = mock.MagicMock()
    return {"ti": ti, "run_id": "manual__1", "params": {}}


def test_sensor_defers_to_one_trigger_for_all_batches(scripted):
    sensor = BatchSensor(task_id="wait", handle=handle().model_dump(mode="json"), timeout=600)
    ctx = context()
    with pytest.raises(TaskDeferred) as info:
        sensor.execute(ctx)
    trigger = info.value.trigger
    assert isinstance(trigger, BatchWaitTrigger)
    assert info.value.method_name == "execute_complete"
    assert trigger.batch_ids == ["b1", "b2"] and trigger.conn_id == "llm_openai_default"
    assert datetime.fromisoformat(trigger.deadline) > datetime.now(UTC)
    assert API_KEY not in repr(trigger.serialize())
    # links pushed before deferring, so they show while the task waits
    pushed = {c.kwargs["key"]: c.kwargs["value"] for c in ctx["ti"].xcom_push.call_args_list}
    assert pushed["_link_BatchLink_0"] == "http://127.0.0.1:9/v1/batches/b1"
    assert pushed["_link_BatchLink_1"] == "http://127.0.0.1:9/v1/batches/b2"
    assert pushed["_link_BatchLink_2"] == ""


def test_sensor_resume(scripted, tmp_path):
    h = handle(run_path=f"file://{tmp_path}/run").model_dump(mode="json")
    sensor = BatchSensor(task_id="wait", handle=h, cancel_on_timeout=True)
    done = {"status": "success", "states": {"b1": {"ending": "completed"}, "b2": {"ending": "expired"}}}
    assert sensor.execute_complete(context(), done) == h
    assert not (tmp_path / "run" / "attempt-1" / "deadline.json").exists()
    # the deadline passed, the trigger cancelled and saw both batches end: an ending, not a crash
    ended = {
        "status": "deadline",
        "deadline": "2026-01-01T00:00:00+00:00",
        "cancelled": {"b1": "cancelling"},
        "states": {"b1": {"ending": "cancelled"}, "b2": {"ending": "completed"}},
        "message": "deadline passed",
    }
    assert sensor.execute_complete(context(), ended) == h
    note = json.loads((tmp_path / "run" / "attempt-1" / "deadline.json").read_text())
    assert note["cancelled"] == {"b1": "cancelling"} and note["still_running"] == []
    with pytest.raises(AirflowSensorTimeout, match="collect task waits"):
        sensor.execute_complete(
            context(), {**ended, "status": "timeout", "pending": ["b1"], "message": "still running"}
        )
    note = json.loads((tmp_path / "run" / "attempt-1" / "deadline.json").read_text())
    assert note["still_running"] == ["b1"]
    assert ScriptedBackend.instances == []  # the trigger cancels, not the resumed task
    with pytest.raises(AirflowException, match="401"):
        sensor.execute_complete(context(), {"status": "error", "message": "AuthenticationError: 401"})


def test_sensor_poke_mode(scripted):
    scripted["polls_to_end"] = 1
    sensor = BatchSensor(task_id="wait", handle=handle().model_dump(mode="json"), deferrable=False)
    assert not sensor.poke(context()).is_done
    scripted["polls_to_end"] = 0
    done = sensor.poke(context())
    assert done.is_done and done.xcom_value["batches"][0]["batch_id"] == "b1"


def test_sensor_poke_mode_deadline_cancels_and_waits_for_the_ending(scripted, tmp_path):
    scripted["polls_to_end"] = 10_000
    h = handle(run_path=f"file://{tmp_path}/run").model_dump(mode="json")
    sensor = BatchSensor(
        task_id="wait",
        handle=h,
        deferrable=False,
        poll_interval=0.01,
        timeout=0.2,
        cancel_on_timeout=True,
        timeout_grace=5,
    )
    assert sensor.execute(context()) == h
    assert ScriptedBackend.instances[-1].cancelled == ["b1", "b2"]
    note = json.loads((tmp_path / "run" / "attempt-1" / "deadline.json").read_text())
    assert set(note["cancelled"]) == {"b1", "b2"} and note["still_running"] == []


def test_sensor_poke_mode_runs_to_completion(scripted):
    scripted["polls_to_end"] = 0
    sensor = BatchSensor(
        task_id="wait", handle=handle().model_dump(mode="json"), deferrable=False, poll_interval=0.01
    )
    assert sensor.execute(context())["run_path"] == "file:///tmp/bp-test/run"


def test_handle_defaults_to_the_upstream_return_value(scripted):
    from airflow.sdk import DAG

    with DAG("d"):
        submit = SubmitBatchOperator(task_id="submit", records=[{"id": 1}], prompt_template="{{ id }}")
        wait = BatchSensor(task_id="wait")
        submit >> wait
    ctx = context()
    ctx["ti"].xcom_pull.return_value = handle().model_dump(mode="json")
    with pytest.raises(TaskDeferred):
        wait.execute(ctx)
    ctx["ti"].xcom_pull.assert_called_with(task_ids="submit")


def test_parse_handle_from_rendered_string():
    h = handle()
    assert parse_handle(str(h.model_dump(mode="json"))) == h
    assert parse_handle(h.model_dump_json()) == h
    with pytest.raises(ValueError, match="handle"):
        parse_handle([1])


def test_submit_arguments_are_checked():
    with pytest.raises(ValueError, match="exactly one of"):
        SubmitBatchOperator(task_id="s", prompt_template="x")
    with pytest.raises(ValueError, match="at most one of"):
        SubmitBatchOperator(task_id="s", records=[], prompt_template="x", build_request=dict)
    with pytest.raises(ValueError, match="to become requests"):
        SubmitBatchOperator(task_id="s", records=[])
    SubmitBatchOperator(task_id="s", requests_path="/tmp/x.jsonl")


def test_retry_resume_fails_for_its_next_try_while_batches_still_run(scripted, tmp_path):
    h = handle(run_path=f"file://{tmp_path}/run").model_dump(mode="json")
    op = RetryBatchOperator(task_id="retry", handle=h)
    event = {"status": "timeout", "message": "m", "pending": ["b2"], "cancelled": {"b2": "cancelling"}}
    with pytest.raises(AirflowException, match=r"attempt 1: 1 batch.*had not ended.*next try waits"):
        op.resume(context(), event, h)
    note = json.loads((tmp_path / "run" / "attempt-1" / "deadline.json").read_text())
    assert note["still_running"] == ["b2"]


def test_on_timeout_is_checked():
    with pytest.raises(ValueError, match="on_timeout='later'"):
        RetryBatchOperator(task_id="retry", on_timeout="later")


def test_collect_adds_its_asset_to_outlets():
    from airflow.sdk import Asset

    asset = Asset("file:///tmp/bp/results")
    op = CollectBatchOperator(task_id="c", results_asset=asset)
    assert asset in op.outlets


def test_batch_urls():
    assert batch_url("openai", "batch_1") == "https://platform.openai.com/batches/batch_1"
    assert batch_url("openai", "batch_1", "https://api.openai.com/v1") == (
        "https://platform.openai.com/batches/batch_1"
    )
    assert batch_url("anthropic", "msgbatch_1").startswith("https://console.anthropic.com/")
    assert batch_url("openai", "b", "http://127.0.0.1:8787/v1") == "http://127.0.0.1:8787/v1/batches/b"
    assert batch_url("anthropic", "b", "http://127.0.0.1:8787") == (
        "http://127.0.0.1:8787/v1/messages/batches/b"
    )
    assert BatchLink(index=1).name == "LLM Batch 2"


def test_poke_mode_on_kill_cancels_when_asked(scripted):
    sensor = BatchSensor(
        task_id="wait", handle=handle().model_dump(mode="json"), deferrable=False, cancel_on_kill=True
    )
    sensor.poke(context())
    sensor.on_kill()
    assert ScriptedBackend.instances[-1].cancelled == ["b1", "b2"]
    quiet = BatchSensor(task_id="wait", handle=handle().model_dump(mode="json"), deferrable=False)
    quiet.poke(context())
    quiet.on_kill()
    assert ScriptedBackend.instances[-1].cancelled == []


def test_retry_takes_the_handle_from_the_collect_summary():
    from airflow.sdk import DAG

    h = handle().model_copy(update={"conn_id": "my_openai"}).model_dump(mode="json")
    with DAG("d2"):
        collect = CollectBatchOperator(task_id="collect", handle=h)
        retry = RetryBatchOperator(task_id="retry")
        collect >> retry
    ctx = context()
    ctx["ti"].xcom_pull.return_value = {"run_path": h["run_path"], "provider": "openai", "handle": h}
    assert retry._latest_handle(ctx).conn_id == "my_openai"
    with pytest.raises(ValueError, match="not a run handle"):
        parse_handle({"run_path": "x", "provider": "openai", "succeeded": 3})


def test_retry_in_the_worker_treats_the_deadline_as_an_ending(scripted, tmp_path):
    scripted["polls_to_end"] = 10_000
    h = handle(run_path=f"file://{tmp_path}/run")
    op = RetryBatchOperator(
        task_id="retry",
        deferrable=False,
        attempt_timeout=0.2,
        timeout_grace=5,
        poll_interval=0.01,
        max_poll_interval=0.02,
    )
    states = op._wait_in_worker(op._hook("openai", h.conn_id), h, context())
    assert {s["ending"] for s in states.values()} == {"cancelled"}
    assert ScriptedBackend.instances[-1].cancelled == ["b1", "b2"]
    note = json.loads((tmp_path / "run" / "attempt-1" / "deadline.json").read_text())
    assert set(note["cancelled"]) == {"b1", "b2"} and note["still_running"] == []
