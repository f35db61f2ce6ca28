"""Through the real services: scheduler (LocalExecutor, one slot), dag-processor, api-server and
triggerer as separate processes on SQLite. The wait task must sit in ``deferred`` while the batch
runs, leaving the only executor slot to another task, and the run must succeed."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import AIRFLOW_ENV, API_KEY, emulator_connections

from batch_provider.emulator.process import running_emulator

COMPONENTS = ("api-server", "dag-processor", "scheduler", "triggerer")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def airflow(env: dict, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "airflow", *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def task_states(db: Path) -> dict[str, str]:
    with sqlite3.connect(db, timeout=10) as conn:
        rows = conn.execute(
            "select task_id, state from task_instance where dag_id='scheduler_e2e'"
        ).fetchall()
    return {task_id: state for task_id, state in rows}


def dag_registered(db: Path) -> bool:
    try:
        with sqlite3.connect(db, timeout=10) as conn:
            row = conn.execute("select is_paused from dag where dag_id='scheduler_e2e'").fetchone()
    except sqlite3.OperationalError:
        return False
    return row is not None and not row[0]


def run_state(db: Path) -> str | None:
    with sqlite3.connect(db, timeout=10) as conn:
        row = conn.execute("select state from dag_run where dag_id='scheduler_e2e'").fetchone()
    return row[0] if row else None


def stop(procs: dict[str, subprocess.Popen]) -> None:
    for proc in procs.values():
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + 20
    for proc in procs.values():
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.mark.timeout(400)
def test_wait_task_is_deferred_while_the_batch_runs(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    db = home / "airflow.db"
    port = free_port()
    # A 30-request batch takes ~30 s: well past the time the single slot needs for the side task
    # and the wait task's start, so the trigger meets a running batch (see snag 1 in the notes).
    with running_emulator(time_factor=45.0) as emu:
        env = {
            **os.environ,
            **AIRFLOW_ENV,
            **emulator_connections(emu.base_url),
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{db}",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": "1",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(port),
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
            "AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC": "1",
            "BATCH_PROVIDER_RUN_PATH": f"file://{tmp_path / 'runs'}",
        }
        migrated = airflow(env, "db", "migrate")
        assert migrated.returncode == 0, migrated.stderr[-3000:]
        logs = home / "component-logs"
        logs.mkdir()
        procs: dict[str, subprocess.Popen] = {}
        try:
            for name in COMPONENTS:
                procs[name] = subprocess.Popen(
                    [sys.executable, "-m", "airflow", name],
                    env=env,
                    stdout=(logs / f"{name}.log").open("wb"),
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            for _ in range(120):
                if dag_registered(db):
                    break
                time.sleep(1)
            else:
                pytest.fail("the dag-processor never registered scheduler_e2e:\n" + _tail(logs))
            triggered = airflow(env, "dags", "trigger", "scheduler_e2e")
            assert triggered.returncode == 0, triggered.stderr[-3000:]

            snapshots: list[tuple[dict[str, str], dict]] = []
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline and run_state(db) not in ("success", "failed"):
                states = task_states(db)
                batches = emu.stats()["batches_created"]["openai"]
                snapshots.append((states, {"batches": batches}))
                time.sleep(0.5)
            final = task_states(db)
            assert run_state(db) == "success", (final, _tail(logs))
            assert emu.stats()["batches_created"]["openai"] == 1
        finally:
            stop(procs)

    deferred = [s for s, _ in snapshots if s.get("llm.wait") == "deferred"]
    assert deferred, "the wait task was never seen deferred"
    # while the wait task was deferred, the single executor slot ran another task
    assert any(s.get("side") in ("running", "success") for s in deferred), snapshots
    assert final == {
        "llm.submit": "success",
        "llm.wait": "success",
        "llm.collect": "success",
        "llm.retry": "success",
        "side": "success",
    }
    trigger_logs = list((home / "logs").rglob("*llm.wait*/*trigger*")) or list(
        (home / "logs").rglob("*.log.trigger.*")
    )
    assert trigger_logs, "no trigger log written by the triggerer"
    assert "batches ended" in "".join(p.read_text() for p in trigger_logs)
    # the link to the batch was stored for the waiting task, and the key went nowhere
    with sqlite3.connect(db, timeout=10) as conn:
        link = conn.execute(
            "select value from xcom where task_id='llm.wait' and key='_link_BatchLink_0'"
        ).fetchone()
        stored = [
            str(row)
            for table in ("xcom", "trigger", "rendered_task_instance_fields")
            for row in conn.execute(f"select * from {table}").fetchall()
        ]
    assert link and f"{emu.base_url}/v1/batches/batch_" in str(link[0])
    assert not any(API_KEY in row for row in stored)
    assert not any(
        API_KEY in p.read_text(errors="replace") for p in (home / "logs").rglob("*") if p.is_file()
    )
    shutil.rmtree(home / "logs", ignore_errors=True)


def _tail(logs: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text()[-1500:]}" for p in sorted(logs.glob("*.log")))
