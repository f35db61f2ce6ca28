"""Partial failures recovered by the retry task; expiries whose partial results survive; dead
letters for what cannot be retried. An emulator whose day passes in 3 s makes expiry quick."""

from __future__ import annotations

from collections import Counter

import pytest
from airflow_setup import emulator_connections
from dagutil import load_dags, read_jsonl, task_states, xcom

from batch_provider.emulator.process import running_emulator

pytestmark = pytest.mark.usefixtures("airflow_db")


@pytest.fixture
def fast_day(monkeypatch, run_root):
    with running_emulator(time_factor=86400 / 3) as emu:
        for name, value in emulator_connections(emu.base_url).items():
            monkeypatch.setenv(name, value)
        yield emu


def run_dir(run_root, dag_id):
    (folder,) = list((run_root / dag_id).glob("*/submit"))
    return folder


def test_retry_recovers_retryable_item_errors(fast_day, run_root):
    run = load_dags("test_dags/faulty_runs.py").faulty_item_errors.test()
    assert str(run.state) == "success", task_states(run)
    folder = run_dir(run_root, "faulty_item_errors")
    results = read_jsonl(folder / "results.jsonl")
    assert len(results) == 30
    attempts = Counter(r["attempt"] for r in results)
    assert attempts[1] > 0 and attempts[2] > 0, attempts
    assert read_jsonl(folder / "dead_letter.jsonl") == []
    summary = xcom(run, "retry")
    assert summary["succeeded"] == 30 and summary["dead_letter"] == 0 and summary["attempts"] >= 2
    assert fast_day.stats()["batches_created"]["openai"] == summary["attempts"]


def test_expired_batch_keeps_partial_results_and_retries_the_rest(fast_day, run_root):
    run = load_dags("test_dags/faulty_runs.py").faulty_expiry.test()
    assert str(run.state) == "success", task_states(run)
    folder = run_dir(run_root, "faulty_expiry")
    collected = xcom(run, "collect")
    assert 0 < collected["succeeded"] < 30
    assert collected["unresolved_by_status"].get("expired", 0) == 30 - collected["succeeded"]
    results = read_jsonl(folder / "results.jsonl")
    assert len(results) == 30
    from_first = [r for r in results if r["attempt"] == 1]
    assert len(from_first) == collected["succeeded"]  # the partial results survived the retry


def test_non_retryable_errors_go_to_dead_letter(fast_day, run_root):
    run = load_dags("test_dags/faulty_runs.py").faulty_dead_letter.test()
    states = task_states(run)
    assert states["retry"] == "failed" and states["collect"] == "success", states
    folder = run_dir(run_root, "faulty_dead_letter")
    dead = read_jsonl(folder / "dead_letter.jsonl")
    results = read_jsonl(folder / "results.jsonl")
    assert dead and len(dead) + len(results) == 30
    assert all(d["error"]["retryable"] is False for d in dead)
    assert fast_day.stats()["batches_created"]["openai"] == 1  # nothing resubmitted
