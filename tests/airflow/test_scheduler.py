"""Through the real services: scheduler (LocalExecutor, one slot), dag-processor, api-server and
triggerer as separate processes on SQLite.

- The wait task sits in ``deferred`` while the batch runs, leaving the only executor slot to
  another task, and the run succeeds.
- Marking a deferred wait task failed makes the triggerer call ``on_kill``, which cancels the
  remote batch (``cancel_on_kill=True``).
- ``airflow backfill create`` over months gives each interval its own run folder and batch;
  reprocessing the same months re-attaches to those batches instead of creating new ones.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from airflow_setup import AIRFLOW_ENV, API_KEY, emulator_connections

from batch_provider.emulator.process import EmulatorProcess, running_emulator

COMPONENTS = ("api-server", "dag-processor", "scheduler", "triggerer")


@dataclass
class Services:
    home: Path
    db: Path
    env: dict[str, str]
    emu: EmulatorProcess
    api: str
    runs: Path

    @property
    def logs(self) -> Path:
        return self.home / "component-logs"

    def airflow(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "airflow", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    def query(self, sql: str, *params: object) -> list[tuple]:
        with sqlite3.connect(self.db, timeout=10) as conn:
            return conn.execute(sql, params).fetchall()

    def task_states(self, dag_id: str) -> dict[str, str]:
        rows = self.query("select task_id, state from task_instance where dag_id=?", dag_id)
        return dict(rows)

    def run_state(self, dag_id: str) -> str | None:
        rows = self.query("select state from dag_run where dag_id=?", dag_id)
        return rows[0][0] if rows else None

    def wait_registered(self, dag_id: str) -> None:
        for _ in range(120):
            try:
                if self.query("select is_paused from dag where dag_id=?", dag_id) == [(0,)]:
                    return
            except sqlite3.OperationalError:
                pass
            time.sleep(1)
        pytest.fail(f"the dag-processor never registered {dag_id}:\n{self.tail()}")

    def trigger(self, dag_id: str) -> str:
        self.wait_registered(dag_id)
        done = self.airflow("dags", "trigger", dag_id, "-o", "json")
        assert done.returncode == 0, done.stderr[-3000:]
        return self.query("select run_id from dag_run where dag_id=?", dag_id)[0][0]

    def token(self) -> str:
        passwords = json.loads((self.home / "simple_auth_manager_passwords.json.generated").read_text())
        resp = httpx.post(
            f"{self.api}/auth/token", json={"username": "admin", "password": passwords["admin"]}, timeout=30
        )
        resp.raise_for_status()
        return resp.json()["access_token"]

    def tail(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-1500:]}" for p in sorted(self.logs.glob("*.log")))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


@pytest.fixture(scope="module")
def services(tmp_path_factory) -> Iterator[Services]:
    root = tmp_path_factory.mktemp("services")
    home = root / "home"
    (home / "component-logs").mkdir(parents=True)
    port = free_port()
    # A 30-request batch takes ~30 s: well past the time the single slot needs for the side task
    # and the wait task's start, so the trigger meets a running batch (see snag 1 in the notes).
    with running_emulator(time_factor=45.0) as emu:
        env = {
            **os.environ,
            **AIRFLOW_ENV,
            **emulator_connections(emu.base_url),
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
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
            "BATCH_PROVIDER_RUN_PATH": f"file://{root / 'runs'}",
            "BATCH_EXAMPLES_POLL_INTERVAL": "2",
        }
        services = Services(home, home / "airflow.db", env, emu, f"http://127.0.0.1:{port}", root / "runs")
        migrated = services.airflow("db", "migrate")
        assert migrated.returncode == 0, migrated.stderr[-3000:]
        procs: dict[str, subprocess.Popen] = {}
        try:
            for name in COMPONENTS:
                procs[name] = subprocess.Popen(
                    [sys.executable, "-m", "airflow", name],
                    env=env,
                    stdout=(services.logs / f"{name}.log").open("wb"),
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            yield services
        finally:
            stop(procs)


@pytest.mark.timeout(400)
def test_wait_task_is_deferred_while_the_batch_runs(services):
    services.trigger("scheduler_e2e")
    # the dag-processor parses every example DAG without an import error (one file at a time:
    # the last ones may still be in its queue when scheduler_e2e is registered)
    examples = {"document_summarisation", "historical_backfill", "manual_batch", "nightly_ticket_enrichment"}
    for dag_id in sorted(examples | {"ticket_enrichment_report"}):
        services.wait_registered(dag_id)
    assert services.query("select filename, stacktrace from import_error") == []
    snapshots: list[dict[str, str]] = []
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and services.run_state("scheduler_e2e") not in ("success", "failed"):
        snapshots.append(services.task_states("scheduler_e2e"))
        time.sleep(0.5)
    final = services.task_states("scheduler_e2e")
    assert services.run_state("scheduler_e2e") == "success", (final, services.tail())
    assert services.emu.stats()["batches_created"]["openai"] == 1

    deferred = [s for s in snapshots if s.get("llm.wait") == "deferred"]
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
    logs = services.home / "logs"
    trigger_logs = list((logs / "dag_id=scheduler_e2e").rglob("*.log.trigger.*"))
    assert trigger_logs, "no trigger log written by the triggerer"
    assert "batches ended" in "".join(p.read_text() for p in trigger_logs)
    # the link to the batch was stored for the waiting task, and the key went nowhere
    link = services.query(
        "select value from xcom where dag_id=? and task_id=? and key=?",
        "scheduler_e2e",
        "llm.wait",
        "_link_BatchLink_0",
    )
    assert link and f"{services.emu.base_url}/v1/batches/batch_" in str(link[0][0])
    stored = [
        str(row)
        for table in ("xcom", "trigger", "rendered_task_instance_fields")
        for row in services.query(f"select * from {table}")
    ]
    assert not any(API_KEY in row for row in stored)
    assert not any(API_KEY in p.read_text(errors="replace") for p in logs.rglob("*") if p.is_file())


@pytest.mark.timeout(400)
def test_marking_the_deferred_task_failed_cancels_the_batch(services):
    run_id = services.trigger("scheduler_kill")
    deadline = time.monotonic() + 200
    while services.task_states("scheduler_kill").get("llm.wait") != "deferred":
        assert time.monotonic() < deadline, (services.task_states("scheduler_kill"), services.tail())
        time.sleep(0.5)
    time.sleep(3)  # let the triggerer pick the trigger up
    headers = {"Authorization": f"Bearer {services.token()}"}
    resp = httpx.patch(
        f"{services.api}/api/v2/dags/scheduler_kill/dagRuns/{run_id}/taskInstances/llm.wait",
        json={"new_state": "failed"},
        headers=headers,
        timeout=30,
    )
    assert resp.status_code == 200, resp.text
    batch_ids = [
        json.loads(row[0])["batches"][0]["batch_id"]
        for row in services.query(
            "select value from xcom where dag_id=? and task_id=? and key=?",
            "scheduler_kill",
            "llm.submit",
            "return_value",
        )
    ]
    status = None
    while time.monotonic() < deadline:
        got = httpx.get(
            f"{services.emu.base_url}/v1/batches/{batch_ids[0]}",
            headers={"Authorization": f"Bearer {API_KEY}"},
            timeout=30,
        )
        status = got.json()["status"]
        if status in ("cancelling", "cancelled"):
            break
        time.sleep(0.5)
    assert status in ("cancelling", "cancelled"), (status, services.tail())
    trigger_logs = "".join(
        p.read_text() for p in (services.home / "logs" / "dag_id=scheduler_kill").rglob("*.log.trigger.*")
    )
    assert "Task killed: cancelling 1 batch(es)" in trigger_logs


def backfill_runs(services: Services) -> dict[str, str]:
    rows = services.query(
        "select run_id, state from dag_run where dag_id='historical_backfill' and run_type='backfill'"
    )
    return dict(rows)


def create_backfill(services: Services, *args: str) -> None:
    """``airflow backfill create``, retried. On SQLite the CLI can meet a database the scheduler
    has locked: the command fails, or it commits the backfill and then creates none of its runs
    (seen when clearing runs to reprocess them). Such a backfill would stay open for ever and
    refuse the next one, so it is closed and the command run again."""
    for _ in range(5):
        done = services.airflow("backfill", "create", "--dag-id", "historical_backfill", *args)
        newest = services.query("select max(id) from backfill")[0][0]
        runs = services.query(
            "select count(*) from backfill_dag_run where backfill_id=? and dag_run_id is not null", newest
        )[0][0]
        if done.returncode == 0 and runs:
            return
        if newest is not None and not runs:
            services.query(
                "update backfill set completed_at=CURRENT_TIMESTAMP where id=? and completed_at is null",
                newest,
            )
        time.sleep(3)
    pytest.fail(done.stderr[-3000:])


def wait_backfill(services: Services, count: int) -> dict[str, str]:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        runs = backfill_runs(services)
        open_backfills = services.query("select count(*) from backfill where completed_at is null")[0][0]
        finished = all(state in ("success", "failed") for state in runs.values())
        if len(runs) == count and finished and not open_backfills:
            return runs
        time.sleep(1)
    pytest.fail(f"backfill did not finish: {backfill_runs(services)}\n{services.tail()}")


@pytest.mark.timeout(600)
def test_backfill_over_months_and_reprocessing_reattaches(services):
    services.wait_registered("historical_backfill")
    before = services.emu.stats()["batches_created"]["openai"]
    months = ("--from-date", "2026-02-01", "--to-date", "2026-03-01")
    create_backfill(services, *months)
    runs = wait_backfill(services, 2)
    assert set(runs.values()) == {"success"}, (runs, services.tail())
    folders = sorted(p.parent.name for p in (services.runs / "historical_backfill").glob("*/tag_reviews"))
    assert len(folders) == 2  # one run folder per interval
    assert services.emu.stats()["batches_created"]["openai"] == before + 2

    create_backfill(services, *months, "--reprocess-behavior", "completed")
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        tries = services.query(
            "select count(*) from task_instance where dag_id='historical_backfill' "
            "and task_id='tag_reviews.retry' and state='success' and try_number >= 2"
        )[0][0]
        if tries == 2:
            break
        time.sleep(1)
    else:
        pytest.fail(f"reprocessing did not finish: {services.task_states('historical_backfill')}")
    assert set(backfill_runs(services)) == set(runs)  # the same runs, cleared and run again
    assert services.emu.stats()["batches_created"]["openai"] == before + 2  # nothing paid twice
