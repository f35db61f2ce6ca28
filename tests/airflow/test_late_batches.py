"""Late batches through real DAG runs (``dag.test()``) against the emulator at real speed (time
factor 1): the queue-delay knob makes a batch late, the wait reports it overdue exactly once and
keeps waiting (deferred, poking or rescheduled) until the batch ends; the retry task reports a
late resubmitted attempt once, deferred or waiting in the worker; the completion-time history of
earlier runs sets the expectation when none is given; the Deadline Alerts callback reports a
running batch."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from datetime import UTC, datetime

import pytest
from airflow_setup import emulator_connections
from dagutil import load_dags, read_jsonl, task_states

from batch_provider.core.history import CompletionHistory, HistoryKey
from batch_provider.emulator.process import running_emulator

pytestmark = pytest.mark.usefixtures("airflow_db")

DAGS = "test_dags/late_runs.py"
# 10 requests take 0 + 1 + 10 × 0.1 = 2 s; a queue delay comes on top
QUICK = ["--validating-seconds", "0", "--processing-seconds", "1", "--per-request-seconds", "0.1"]
QUICK += ["--finalizing-seconds", "0"]


@pytest.fixture
def real_speed(monkeypatch, run_root, tmp_path):
    with running_emulator(time_factor=1.0, extra_args=QUICK) as emu:
        for name, value in emulator_connections(emu.base_url).items():
            monkeypatch.setenv(name, value)
        monkeypatch.setenv("LATE_RUNS_CALLS", str(tmp_path / "overdue.jsonl"))
        yield emu


def calls(tmp_path) -> list[dict]:
    return read_jsonl(tmp_path / "overdue.jsonl")


def folder_of(run_root, dag_id, run):
    return run_root / dag_id / run.run_id.replace(":", "_").replace("+", "_") / "tickets"


def test_a_late_batch_fires_one_overdue_callback_and_the_wait_goes_on(real_speed, run_root, tmp_path):
    real_speed.set_queue_delay(next=[8])
    run = load_dags(DAGS).late_fixed.test()
    states = task_states(run)
    assert str(run.state) == "success", states
    assert set(states.values()) == {"success"}, states
    told = calls(tmp_path)
    assert len(told) == 1, told
    (batch_id, info), = told[0]["overdue"].items()
    assert told[0]["task_id"] == "tickets.wait"
    assert info["done"] == 0 and info["native_status"] == "validating"
    assert told[0]["progress"]["batches_ended"] == 0
    (folder,) = (run_root / "late_fixed").glob("*/tickets")
    assert len(read_jsonl(folder / "results.jsonl")) == 10  # waited on to the end, all collected
    manifest = json.loads((folder / "manifest.json").read_text())
    (batch,) = manifest["batches"]
    assert batch["batch_id"] == batch_id and batch["queue_seconds"] >= 8
    assert batch["completion_seconds"] >= batch["queue_seconds"] + batch["processing_seconds"] - 1
    assert real_speed.stats()["batches_created"]["openai"] == 1


def overdue_note(folder, attempt: int) -> dict | None:
    path = folder / f"attempt-{attempt}" / "overdue.json"
    return json.loads(path.read_text()) if path.exists() else None


@pytest.mark.parametrize("dag_id", ["late_poke", "late_reschedule"])
def test_a_wait_in_the_worker_reports_a_late_batch_once_across_its_pokes(
    real_speed, run_root, tmp_path, dag_id
):
    real_speed.set_queue_delay(next=[8])  # expected within 3 s, polled every 0.2 or 0.5 s until 9 s
    run = getattr(load_dags(DAGS), dag_id).test()
    states = task_states(run)
    assert str(run.state) == "success", states
    assert set(states.values()) == {"success"}, states
    told = calls(tmp_path)
    wait_id = "tickets.wait" if dag_id == "late_poke" else "wait"
    assert [line["task_id"] for line in told] == [wait_id], told
    (info,) = told[0]["overdue"].values()
    assert info["done"] == 0 and info["native_status"] == "validating"
    (folder,) = (run_root / dag_id).glob("*/tickets" if dag_id == "late_poke" else "*/submit")
    assert overdue_note(folder, 1)["task_id"] == wait_id
    assert len(read_jsonl(folder / "results.jsonl")) == 10  # waited on to the end, all collected


@pytest.mark.parametrize("dag_id", ["late_retry", "late_retry_worker"])
def test_a_late_resubmitted_attempt_fires_one_callback_and_the_run_finishes(
    real_speed, run_root, tmp_path, dag_id
):
    real_speed.set_faults({"item_recovery": 1.0})  # the row resubmitted in attempt 2 is answered
    real_speed.set_queue_delay(next=[0, 12])  # attempt 1 on time, attempt 2 held 12 s (expected 5 s)
    run = getattr(load_dags(DAGS), dag_id).test()
    states = task_states(run)
    assert str(run.state) == "success", states
    assert set(states.values()) == {"success"}, states
    told = calls(tmp_path)
    assert [line["task_id"] for line in told] == ["tickets.retry"], told
    (info,) = told[0]["overdue"].values()
    assert info["done"] == 0 and info["native_status"] == "validating"
    (folder,) = (run_root / dag_id).glob("*/tickets")
    assert overdue_note(folder, 1) is None
    assert overdue_note(folder, 2)["task_id"] == "tickets.retry"
    assert list(overdue_note(folder, 2)["overdue"]) == list(told[0]["overdue"])
    results = read_jsonl(folder / "results.jsonl")
    assert len(results) == 10 and {r["attempt"] for r in results} == {1, 2}
    assert real_speed.stats()["batches_created"]["openai"] == 2


def test_history_of_earlier_runs_sets_the_expectation(real_speed, run_root, tmp_path):
    dags = load_dags(DAGS)
    for _ in range(3):
        run = dags.late_history.test()
        assert str(run.state) == "success", task_states(run)
    assert calls(tmp_path) == []  # on time: no alert, and none before there was history
    key = HistoryKey(dag_id="late_history", group="tickets", provider="openai", model="gpt-4o-mini")
    history = CompletionHistory.load(key.path(run_root))
    assert len(history.entries) == 3 and {e.requests for e in history.entries} == {10}
    estimate = history.estimate(10)
    times = sorted(e.seconds for e in history.entries)
    assert estimate.p50_seconds == times[1] and estimate.p95_seconds == times[2]
    assert 2 <= estimate.p50_seconds < 8
    real_speed.set_queue_delay(next=[estimate.p95_seconds * 1.5 + 6])
    run = dags.late_history.test()
    assert str(run.state) == "success", task_states(run)
    told = calls(tmp_path)
    assert len(told) == 1, told
    (info,) = told[0]["overdue"].values()
    assert info["native_status"] in ("validating", "in_progress") and info["done"] < 10
    assert len(CompletionHistory.load(key.path(run_root)).entries) == 4


def test_deadline_alert_dag_calls_the_shipped_callback(real_speed, run_root, monkeypatch):
    from airflow.sdk import AsyncCallback, DeadlineAlert
    from airflow.triggers.callback import CallbackTrigger

    monkeypatch.setenv("BATCH_EXAMPLES_POLL_INTERVAL", "0.3")
    dag = load_dags("examples/late_batch_alerts.py").dag
    alert = dag.deadline[0] if isinstance(dag.deadline, list) else dag.deadline
    assert isinstance(alert, DeadlineAlert) and isinstance(alert.callback, AsyncCallback)
    data = alert.callback.serialize()
    assert data["path"] == "batch_provider.callbacks.report_batch_progress"
    real_speed.set_queue_delay(next=[10])
    reports: list = []

    def miss_the_deadline() -> None:
        """What the scheduler and triggerer do on a missed deadline, once the batch runs."""
        limit = time.monotonic() + 60
        runs = run_root / "late_batch_alerts"
        while time.monotonic() < limit and not list(runs.glob("*/tickets/claims")):
            time.sleep(0.2)
        time.sleep(1.0)  # the submit task records its batch
        (folder,) = runs.glob("*/tickets")
        context = {"dag_run": {"dag_id": "late_batch_alerts", "run_id": folder.parent.name}}
        trigger = CallbackTrigger(data["path"], {**data["kwargs"], "context": context})

        async def run() -> None:
            async for event in trigger.run():
                reports.append(event.payload)

        asyncio.run(run())

    # dag.test() never evaluates deadlines, and in Airflow 3.3 fails at the end of a run of a DAG
    # that has one (it looks the alert rows up by their serialized form): the thread above plays
    # the scheduler's and the triggerer's part, so the run itself goes without the alert
    monkeypatch.setattr(dag, "deadline", None)
    watcher = threading.Thread(target=miss_the_deadline)
    watcher.start()
    run = dag.test(logical_date=datetime(2026, 11, 20, 1, tzinfo=UTC))  # that night's tickets
    watcher.join()
    assert str(run.state) == "success", task_states(run)
    final = reports[-1]
    assert str(final["state"]) == "success", final
    body = final["body"]
    (batch,) = body["batches"]
    assert batch["group"] == "tickets" and batch["ended"] is False and batch["done"] == 0
    assert batch["total"] == 30 and batch["status"] == "validating"
    assert "1 of 1 batch(es) still running" in body["message"]
