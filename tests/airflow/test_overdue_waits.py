"""Overdue reports of the waits besides the deferred sensor, against the emulator over HTTP at
real speed (its queue delay holds a batch): the sensor in reschedule mode (a fresh task instance
for every poke) reports a late batch once, and none for a batch on time; the retry task told by
its trigger reports, then defers again on the same trigger state with its handle, and the same
event again is not reported twice; ``llm_batch_group`` and ``@task.batch_llm`` give the retry
task the options."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from unittest import mock

import pytest
from airflow.sdk.exceptions import TaskDeferred
from airflow_setup import emulator_connections

from batch_provider.core.handle import RunHandle
from batch_provider.emulator.process import running_emulator
from batch_provider.operators import RetryBatchOperator, SubmitBatchOperator
from batch_provider.operators._overdue import overdue_text
from batch_provider.sensors import BatchSensor
from batch_provider.triggers.batch import BatchWaitTrigger

ROWS = [{"id": f"t-{i:02d}", "text": f"ticket number {i}"} for i in range(10)]
# real speed (time factor 1), so a batch's creation time is comparable with the test's clock;
# 10 requests take 0 + 1 + 10 × 0.1 = 2 s once out of the queue
QUICK = ["--validating-seconds", "0", "--processing-seconds", "1", "--per-request-seconds", "0.1"]
QUICK += ["--finalizing-seconds", "0"]


@pytest.fixture
def llm_conns(monkeypatch, run_root):
    with running_emulator(time_factor=1.0, extra_args=QUICK) as emu:
        for name, value in emulator_connections(emu.base_url).items():
            monkeypatch.setenv(name, value)
        yield emu


def context(task_id: str) -> dict:
    ti = mock.MagicMock(dag_id="d", task_id=task_id, map_index=-1)
    return {"ti": ti, "run_id": "manual__1", "params": {}}


def submitted() -> dict:
    op = SubmitBatchOperator(
        task_id="submit",
        provider="openai",
        records=ROWS,
        prompt_template="Classify: {{ text }}",
        model="gpt-4o-mini",
        max_tokens=16,
        use_cache=False,
    )
    return op.execute(context("submit"))


def folder_of(handle: dict) -> Path:
    return Path(handle["run_path"].removeprefix("file://"))


def poke_fresh(handle: dict, told: list, **options) -> bool:
    """One poke of reschedule mode: a new sensor instance, as every reschedule builds."""
    sensor = BatchSensor(
        task_id="wait", handle=handle, deferrable=False, mode="reschedule", on_overdue=told.append, **options
    )
    return sensor.poke(context("wait")).is_done


def poke_until_done(handle: dict, told: list, **options) -> int:
    limit = time.monotonic() + 60
    pokes = 0
    while time.monotonic() < limit:
        pokes += 1
        if poke_fresh(handle, told, **options):
            return pokes
        time.sleep(0.2)
    raise AssertionError("the batch did not end within 60 s")


def test_reschedule_mode_reports_a_late_batch_once_across_fresh_instances(llm_conns, run_root):
    llm_conns.set_queue_delay(next=[10_000_000])  # held in the queue until released below
    handle = submitted()
    (batch_id,) = [b["batch_id"] for b in handle["batches"]]
    told: list = []
    for _ in range(3):
        assert not poke_fresh(handle, told, expected_within=0.01)
    assert len(told) == 1, told
    details = told[0]["batch_overdue"]
    assert told[0]["ti"].task_id == "wait"
    assert list(details["overdue"]) == [batch_id]
    late = details["overdue"][batch_id]
    assert late["native_status"] == "validating" and late["done"] == 0
    assert datetime.fromisoformat(late["expected_by"]) < datetime.now(UTC)
    assert details["progress"]["batches_ended"] == 0 and details["progress"]["batches_total"] == 1
    assert details["message"] == overdue_text(details)
    note = json.loads((folder_of(handle) / "attempt-1" / "overdue.json").read_text())
    assert note["attempt"] == 1 and note["task_id"] == "wait" and list(note["overdue"]) == [batch_id]

    llm_conns.set_queue_delay(per_batch={batch_id: 0})
    poke_until_done(handle, told, expected_within=0.01)
    assert len(told) == 1  # told once, however many instances poked


def test_a_batch_on_time_is_not_reported_by_poking(llm_conns, run_root):
    handle = submitted()
    told: list = []
    poke_until_done(handle, told, expected_within=timedelta(hours=1))
    assert told == []
    assert not (folder_of(handle) / "attempt-1" / "overdue.json").exists()


def test_the_retry_task_reports_its_overdue_event_once_and_defers_again_with_its_handle(llm_conns, run_root):
    llm_conns.set_queue_delay(next=[10_000_000])
    handle = submitted()  # stands in for the attempt the retry task resubmitted
    (batch_id,) = [b["batch_id"] for b in handle["batches"]]
    past = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
    trigger = BatchWaitTrigger(
        conn_id=handle["conn_id"],
        provider="openai",
        batch_ids=[batch_id],
        poll_interval_min=0.2,
        poll_interval_max=0.5,
        expected_by={batch_id: past},
    )
    event = asyncio.run(asyncio.wait_for(anext(trigger.run()), 60)).payload
    assert event["status"] == "overdue"
    told: list = []
    retry = RetryBatchOperator(task_id="retry", handle=handle, on_overdue=told.append)
    with pytest.raises(TaskDeferred) as info:
        retry.resume(context("retry"), event, handle)
    assert info.value.method_name == "resume"
    assert info.value.kwargs == {"handle": handle}  # the attempt's handle survives the re-deferral
    assert info.value.trigger.overdue_notified is True
    assert info.value.trigger.batch_ids == [batch_id]
    assert len(told) == 1 and list(told[0]["batch_overdue"]["overdue"]) == [batch_id]
    assert json.loads((folder_of(handle) / "attempt-1" / "overdue.json").read_text())["task_id"] == "retry"

    # the same event again (a new try of the task, a triggerer restarted before the task was told)
    again = RetryBatchOperator(task_id="retry", handle=handle, on_overdue=told.append)
    with pytest.raises(TaskDeferred):
        again.resume(context("retry"), event, handle)
    assert len(told) == 1
    # a new try deferring on that attempt again passes the trigger no expected end
    from batch_provider.operators._overdue import wait_expectation

    fresh = RetryBatchOperator(task_id="retry", expected_within=0.01)
    assert wait_expectation(fresh, RunHandle.model_validate(handle)).expected_by == {}
    assert wait_expectation(fresh, RunHandle.model_validate({**handle, "attempt": 2})).expected_by
    llm_conns.set_queue_delay(per_batch={batch_id: 0})


def test_the_group_and_the_decorator_give_the_retry_task_the_overdue_options():
    from airflow.sdk import DAG

    from batch_provider.decorators.batch_llm import batch_llm_task
    from batch_provider.task_group import llm_batch_group

    def tell(context):
        return None

    with DAG("wired", schedule=None, start_date=datetime(2026, 1, 1), catchup=False) as dag:
        llm_batch_group(
            "tickets",
            provider="openai",
            records=ROWS,
            prompt_template="Classify: {{ text }}",
            model="gpt-4o-mini",
            expected_within=timedelta(minutes=30),
            overdue_factor=2.0,
            on_overdue=tell,
        )

        @batch_llm_task(
            provider="openai", model="gpt-4o-mini", expected_within=60, overdue_factor=3.0, on_overdue=tell
        )
        def reviews() -> list[str]:
            return ["a review"]

        reviews()
    for group, within, factor in (("tickets", timedelta(minutes=30), 2.0), ("reviews", 60, 3.0)):
        for step in ("wait", "retry"):
            op = dag.get_task(f"{group}.{step}")
            assert (op.expected_within, op.overdue_factor, op.on_overdue) == (within, factor, tell), step
    with pytest.raises(ValueError, match="overdue_factor"):
        RetryBatchOperator(task_id="retry", overdue_factor=0)
