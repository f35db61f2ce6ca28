"""Our own deadline is an ending, not a crash: through real DAG runs (``dag.test()``), a wait that
passes its deadline cancels the batches, waits for them to end, and the run collects every paid
answer with no hand clearing; ``on_timeout`` decides the rest and the run's final state."""

from __future__ import annotations

import json

import pytest
from airflow_setup import emulator_connections
from dagutil import load_dags, read_jsonl, task_states, xcom

from batch_provider.emulator.process import running_emulator

pytestmark = pytest.mark.usefixtures("airflow_db")

DAGS = "test_dags/deadline_runs.py"


def use(emulator, monkeypatch) -> None:
    for name, value in emulator_connections(emulator.base_url).items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def stuck_finalizing(monkeypatch, run_root):
    """Every request is answered within a second, then the batch stays ``finalizing`` for good
    (its output file written, as at ``--outputs-at-finalize``) until it is cancelled."""
    args = ["--outputs-at-finalize", "--processing-seconds", "60", "--finalizing-seconds", "1e9"]
    with running_emulator(time_factor=600, extra_args=args) as emu:
        use(emu, monkeypatch)
        yield emu


@pytest.fixture
def slow_batches(monkeypatch, run_root):
    """Requests finish one per emulated 600 s (1 s real): at the 6 s deadline about half of the
    10 are answered; a resubmitted handful ends well within its own 6 s."""
    args = ["--processing-seconds", "0", "--per-request-seconds", "600"]
    with running_emulator(time_factor=600, extra_args=args) as emu:
        use(emu, monkeypatch)
        yield emu


def run_folder(run_root, dag_id):
    (folder,) = list((run_root / dag_id).glob("*/tickets"))
    return folder


def test_batch_held_in_finalizing_past_the_deadline_lands_every_answer(stuck_finalizing, run_root):
    run = load_dags(DAGS).deadline_partial.test()
    states = task_states(run)
    assert str(run.state) == "success", states
    assert set(states.values()) == {"success"}, states
    folder = run_folder(run_root, "deadline_partial")
    results = read_jsonl(folder / "results.jsonl")
    assert sorted(r["custom_id"] for r in results) == [f"t-{i:02d}" for i in range(10)]
    assert read_jsonl(folder / "dead_letter.jsonl") == []
    note = json.loads((folder / "attempt-1" / "deadline.json").read_text())
    assert list(note["cancelled"].values()) == ["cancelling"]
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["deadline_passed"] == [1] and manifest["dead_letter_after_deadline"] == 0
    assert manifest["accounted"] and manifest["succeeded"] == 10 and manifest["finished"]
    batches = json.loads((folder / "attempt-1" / "batches.json").read_text())
    assert [b["native_status"] for b in batches] == ["cancelled"]
    assert stuck_finalizing.stats()["batches_created"]["openai"] == 1


def cut_run(dag_id, run_root):
    run = getattr(load_dags(DAGS), dag_id).test()
    folder = run_folder(run_root, dag_id)
    results = read_jsonl(folder / "results.jsonl")
    dead = read_jsonl(folder / "dead_letter.jsonl")
    manifest = json.loads((folder / "manifest.json").read_text())
    return run, results, dead, manifest


def test_partial_keeps_what_was_answered_and_dead_letters_the_rest(slow_batches, run_root):
    run, results, dead, manifest = cut_run("deadline_partial", run_root)
    assert str(run.state) == "success", task_states(run)
    assert 0 < len(results) < 10 and len(results) + len(dead) == 10
    assert {d["status"] for d in dead} == {"cancelled"}
    assert all("passed its deadline" in d["dead_letter_reason"] for d in dead)
    assert manifest["dead_letter_after_deadline"] == len(dead) and manifest["accounted"]
    assert slow_batches.stats()["batches_created"]["openai"] == 1  # nothing resubmitted
    summary = xcom(run, "tickets.retry")
    assert summary["succeeded"] == len(results) and summary["dead_letter"] == len(dead)


def test_fail_collects_first_then_fails_the_run(slow_batches, run_root):
    run, results, dead, manifest = cut_run("deadline_fail", run_root)
    states = task_states(run)
    assert str(run.state) == "failed", states
    assert states["tickets.wait"] == "success" and states["tickets.collect"] == "success", states
    assert states["tickets.retry"] == "failed", states
    assert 0 < len(results) < 10 and len(results) + len(dead) == 10
    assert manifest["finished"] and manifest["dead_letter_after_deadline"] == len(dead)


def test_retry_resubmits_the_rows_cut_off(slow_batches, run_root):
    run, results, dead, manifest = cut_run("deadline_retry", run_root)
    assert str(run.state) == "success", task_states(run)
    assert len(results) == 10 and dead == []
    attempts = {r["attempt"] for r in results}
    assert attempts == {1, 2}, attempts
    assert manifest["deadline_passed"] == [1] and manifest["accounted"]
    assert slow_batches.stats()["batches_created"]["openai"] == 2


@pytest.fixture
def slow_finalizing(monkeypatch, run_root):
    """Answered within a second, then ``finalizing`` for 10 s real: past the 6 s deadline and the
    1 s grace, but within collect's own wait."""
    args = ["--processing-seconds", "60", "--finalizing-seconds", "6000"]
    with running_emulator(time_factor=600, extra_args=args) as emu:
        use(emu, monkeypatch)
        yield emu


def test_collect_runs_after_a_failed_wait_and_waits_for_the_batches(slow_finalizing, run_root):
    run = load_dags(DAGS).unended.test()
    states = task_states(run)
    assert states["tickets.wait"] == "failed", states
    assert states["tickets.collect"] == "success" and states["tickets.retry"] == "success", states
    folder = run_folder(run_root, "deadline_unended")
    assert len(read_jsonl(folder / "results.jsonl")) == 10
    note = json.loads((folder / "attempt-1" / "deadline.json").read_text())
    assert note["cancelled"] == {} and len(note["still_running"]) == 1
    assert json.loads((folder / "manifest.json").read_text())["succeeded"] == 10


def test_group_lets_collect_follow_a_failed_wait_and_retries_collect_and_retry():
    from datetime import timedelta

    from airflow.sdk import DAG, TriggerRule

    from batch_provider.task_group import llm_batch_group

    with DAG("group_settings") as dag:
        llm_batch_group(
            "g", provider="openai", records=[{"id": 1}], prompt_template="x", timeout=60, on_timeout="fail"
        )
    tasks = {t.task_id: t for t in dag.tasks}
    collect, retry, wait = tasks["g.collect"], tasks["g.retry"], tasks["g.wait"]
    assert collect.trigger_rule == TriggerRule.ALL_DONE_MIN_ONE_SUCCESS
    assert collect.upstream_task_ids == {"g.submit", "g.wait"}  # not run when submit failed
    assert collect.retries == retry.retries == 3
    assert collect.retry_exponential_backoff and retry.retry_exponential_backoff
    assert collect.retry_delay == timedelta(seconds=30)
    assert wait.cancel_on_timeout and wait.timeout_grace == retry.timeout_grace == timedelta(hours=1)
    assert retry.on_timeout == "fail" and collect.wait_timeout == 60
    with pytest.raises(ValueError, match="on_timeout"), DAG("bad_group"):
        llm_batch_group("g", provider="openai", records=[], prompt_template="x", on_timeout="never")
