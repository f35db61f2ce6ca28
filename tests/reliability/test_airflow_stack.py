"""Through the real services (scheduler with LocalExecutor, dag-processor, api-server, triggerer
as separate processes on SQLite), against the emulator:

- the triggerer is SIGKILLed and started again while a wait is deferred: the new triggerer
  resumes the serialized trigger, the run succeeds, and status polls stay at one watcher's rate;
- marking a run failed while its wait is deferred cancels the run's batches (the trigger's
  ``on_kill``), and the finished part is still collectable;
- a failing run (a dead-lettered row, a wait on an unknown batch) fails with clear messages;
- a canary API key set in the connections appears in none of the task and triggerer logs, the
  component logs, the metadata tables (``xcom``, ``trigger``, ``rendered_task_instance_fields``,
  ``log``, ``task_instance``, ``dag_run``), the run folders, or the failure messages.

The emulator runs at time factor 1: batches end only when the test moves its clock.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from batch_provider.emulator.process import running_emulator

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
COMPONENTS = ("api-server", "dag-processor", "scheduler", "triggerer")
DAG_IDS = ("rel_restart", "rel_cancel", "rel_failing")
CANARY = "sk-canary-" + secrets.token_hex(16)
STATUS_ROUTES = ("GET /v1/batches/{batch_id}", "GET /v1/messages/batches/{batch_id}")

pytestmark = pytest.mark.timeout(420)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Stack:
    def __init__(self, home: Path, emulator: Any, env: dict[str, str], api: str) -> None:
        self.home = home
        self.db = home / "airflow.db"
        self.emulator = emulator
        self.env = env
        self.api = api
        self.procs: dict[str, subprocess.Popen] = {}
        self.logs = home / "component-logs"
        self.logs.mkdir(exist_ok=True)
        self.trigger_rows: list[str] = []
        self.failure_messages: list[str] = []
        self.run_paths: list[Path] = []

    def start(self, name: str) -> None:
        log = (self.logs / f"{name}.log").open("ab")
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", "airflow", name],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs.pop(name)
        if proc.poll() is None:
            os.killpg(proc.pid, sig)
        proc.wait(timeout=30)

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.procs.clear()

    def query(self, sql: str, *args: Any) -> list[tuple]:
        with sqlite3.connect(self.db, timeout=30) as conn:
            return conn.execute(sql, args).fetchall()

    def tail(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-2000:]}" for p in sorted(self.logs.glob("*.log"))
        )

    def trigger_dag(self, dag_id: str) -> str:
        response = httpx.post(f"{self.api}/dags/{dag_id}/dagRuns", json={"logical_date": None}, timeout=30)
        assert response.status_code in (200, 201), response.text
        return response.json()["dag_run_id"]

    def states(self, dag_id: str, run_id: str) -> dict[str, str]:
        rows = self.query(
            "select task_id, state from task_instance where dag_id=? and run_id=?", dag_id, run_id
        )
        return {task_id: state for task_id, state in rows}

    def run_state(self, dag_id: str, run_id: str) -> str | None:
        rows = self.query("select state from dag_run where dag_id=? and run_id=?", dag_id, run_id)
        return rows[0][0] if rows else None

    def wait_for(self, what: str, check: Any, timeout: float = 180, every: float = 0.5) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = check()
            if value:
                return value
            self.snapshot_triggers()
            time.sleep(every)
        pytest.fail(f"timed out waiting for {what}\n{self.tail()}")

    def snapshot_triggers(self) -> None:
        """Trigger rows are deleted once they fire: keep what they held while they existed."""
        try:
            rows = self.query("select * from trigger")
        except sqlite3.OperationalError:
            return
        self.trigger_rows += [repr(row) for row in rows]

    def status_polls(self) -> int:
        requests = self.emulator.stats()["requests"]
        return sum(requests.get(route, 0) for route in STATUS_ROUTES)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    home = tmp_path_factory.mktemp("rel-airflow")
    dags = home / "dags"
    dags.mkdir()
    (dags / "rel").symlink_to(HERE / "dags", target_is_directory=True)
    port = free_port()
    with running_emulator(time_factor=1.0) as emulator:
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(40),
            "AIRFLOW__API__SECRET_KEY": secrets.token_hex(20),
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": "2",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(port),
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
            "AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC": "1",
            "AIRFLOW__TRIGGERER__TRIGGERER_HEALTH_CHECK_THRESHOLD": "10",
            "BATCH_PROVIDER_RUN_PATH": f"file://{home / 'runs'}",
            "AIRFLOW_CONN_LLM_OPENAI_DEFAULT": json.dumps(
                {"conn_type": "llm_openai", "host": f"{emulator.base_url}/v1", "password": CANARY}
            ),
            "AIRFLOW_CONN_LLM_ANTHROPIC_DEFAULT": json.dumps(
                {"conn_type": "llm_anthropic", "host": emulator.base_url, "password": CANARY}
            ),
        }
        migrated = subprocess.run(
            [sys.executable, "-m", "airflow", "db", "migrate"],
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert migrated.returncode == 0, migrated.stderr[-3000:]
        stack = Stack(home, emulator, env, f"http://127.0.0.1:{port}/api/v2")
        stack.run_paths.append(home / "runs")
        try:
            for name in COMPONENTS:
                stack.start(name)

            def registered() -> bool:
                try:
                    rows = stack.query("select dag_id, is_paused from dag")
                except sqlite3.OperationalError:
                    return False
                return {d for d, paused in rows if not paused} >= set(DAG_IDS)

            stack.wait_for("the dag-processor to register the DAGs", registered, timeout=180)

            def api_up() -> bool:
                try:
                    return httpx.get(f"{stack.api}/monitor/health", timeout=5).status_code == 200
                except httpx.HTTPError:
                    return False

            stack.wait_for("the api-server", api_up, timeout=120)
            yield stack
        finally:
            stack.stop_all()


def test_triggerer_restart_mid_wait_resumes_without_a_poll_storm(stack: Stack) -> None:
    emu = stack.emulator
    run_id = stack.trigger_dag("rel_restart")
    stack.wait_for("the wait to defer", lambda: stack.states("rel_restart", run_id).get("wait") == "deferred")
    base = stack.status_polls()
    stack.wait_for("the trigger to poll", lambda: stack.status_polls() >= base + 4, timeout=120)
    batches_before = emu.stats()["batches_created"]["openai"]
    assert batches_before == 2

    stack.kill("triggerer")  # SIGKILL to the triggerer and its trigger runner
    time.sleep(2)
    stack.start("triggerer")
    assert stack.states("rel_restart", run_id).get("wait") == "deferred"
    resumed_from = stack.status_polls()
    stack.wait_for(
        "the new triggerer to resume polling", lambda: stack.status_polls() >= resumed_from + 4, timeout=150
    )

    # one watcher for two batches, polling each at most every poll_interval (1 s) plus jitter:
    # a duplicated trigger or a retry storm would show as a multiple of that
    window_start, polls_start = time.monotonic(), stack.status_polls()
    time.sleep(8)
    window = time.monotonic() - window_start
    polls = stack.status_polls() - polls_start
    assert polls <= 2 * (window / 1.0 + 2), f"{polls} status polls in {window:.1f}s for 2 batches"
    assert stack.states("rel_restart", run_id).get("wait") == "deferred"

    emu.advance(2 * 86400)
    stack.wait_for(
        "the run to finish",
        lambda: stack.run_state("rel_restart", run_id) in ("success", "failed"),
        timeout=240,
    )
    states = stack.states("rel_restart", run_id)
    assert stack.run_state("rel_restart", run_id) == "success", (states, stack.tail())
    assert set(states.values()) == {"success"}, states
    assert emu.stats()["batches_created"]["openai"] == batches_before, "the restart paid for a batch twice"
    run_dir = next((stack.home / "runs" / "rel_restart").glob("*/*"))
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["succeeded"] == 12 and manifest["accounted"] is True


def test_marking_the_run_failed_cancels_its_batches(stack: Stack) -> None:
    emu = stack.emulator
    run_id = stack.trigger_dag("rel_cancel")
    stack.wait_for("the wait to defer", lambda: stack.states("rel_cancel", run_id).get("wait") == "deferred")
    base = stack.status_polls()
    stack.wait_for("the trigger to poll", lambda: stack.status_polls() >= base + 2, timeout=120)
    emu.advance(30 + 600)  # about half of each batch done
    response = httpx.patch(
        f"{stack.api}/dags/rel_cancel/dagRuns/{run_id}", json={"state": "failed"}, timeout=30
    )
    assert response.status_code == 200, response.text

    run_dir = next((stack.home / "runs" / "rel_cancel").glob("*/*"))
    handle = json.loads((run_dir / "ledger.json").read_text())
    batch_ids = [c["batch"]["batch_id"] for c in handle["attempts"]["1"]["chunks"]]
    assert len(batch_ids) == 2

    def cancelled() -> bool:
        states = [
            httpx.get(
                f"{emu.base_url}/v1/messages/batches/{b}",
                headers={"x-api-key": "k", "anthropic-version": "2023-06-01"},
                timeout=10,
            ).json()
            for b in batch_ids
        ]
        return all(
            s["processing_status"] in ("canceling", "ended") and s.get("cancel_initiated_at") for s in states
        )

    stack.wait_for("the trigger's on_kill to cancel the batches", cancelled, timeout=120)
    assert stack.run_state("rel_cancel", run_id) == "failed"
    emu.advance(3600)

    import asyncio

    from rel_support import assert_every_row_once, backend_for

    from batch_provider.core.collection import collect_run
    from batch_provider.core.handle import RunHandle
    from batch_provider.core.ledger import Ledger
    from batch_provider.core.rundir import RunDirectory
    from batch_provider.core.submission import handle_for

    rd = RunDirectory(run_dir)
    run_handle: RunHandle = handle_for(Ledger.load(rd), rd, attempt=1, conn_id=None)

    async def collect() -> Any:
        async with backend_for("anthropic", emu) as backend:
            return await collect_run(backend, run_handle, rd)

    summary = asyncio.run(collect())
    assert summary.succeeded > 0, "what finished before the cancel was lost"
    assert summary.unresolved_by_status.get("cancelled", 0) > 0
    assert summary.retryable == summary.unresolved
    assert_every_row_once(rd, [f"q-{i:03d}" for i in range(12)], final=False)


def test_failing_run_fails_with_clear_messages(stack: Stack) -> None:
    emu = stack.emulator
    run_id = stack.trigger_dag("rel_failing")
    stack.wait_for("the wait to defer", lambda: stack.states("rel_failing", run_id).get("wait") == "deferred")
    emu.advance(2 * 86400)
    stack.wait_for(
        "the run to finish",
        lambda: stack.run_state("rel_failing", run_id) in ("success", "failed"),
        timeout=240,
    )
    states = stack.states("rel_failing", run_id)
    assert stack.run_state("rel_failing", run_id) == "failed", states
    assert states["retry"] == "failed" and states["wait_unknown_batch"] == "failed", states
    assert states["collect"] == "success", states
    logs = {p: p.read_text(errors="replace") for p in (stack.home / "logs").rglob("*") if p.is_file()}
    retry_log = "".join(text for path, text in logs.items() if "task_id=retry" in str(path))
    unknown_log = "".join(text for path, text in logs.items() if "task_id=wait_unknown_batch" in str(path))
    assert "dead_letter.jsonl" in retry_log and "still failed" in retry_log, retry_log[-3000:]
    assert "batch_does_not_exist_0000" in unknown_log, unknown_log[-3000:]
    stack.failure_messages += [retry_log, unknown_log]


def test_canary_key_appears_nowhere(stack: Stack) -> None:
    stack.snapshot_triggers()
    assert stack.trigger_rows, "no trigger row was ever seen: the scan would prove nothing"
    assert any("batch_" in row or "msgbatch_" in row for row in stack.trigger_rows)
    found: list[str] = []
    tables = ("xcom", "trigger", "rendered_task_instance_fields", "log", "task_instance", "dag_run")
    for table in tables:
        for row in stack.query(f"select * from {table}"):
            if CANARY in repr(row):
                found.append(f"table {table}: {repr(row)[:300]}")
    assert stack.query("select count(*) from xcom")[0][0] > 0
    assert stack.query("select count(*) from rendered_task_instance_fields")[0][0] > 0
    for row in stack.trigger_rows:
        if CANARY in row:
            found.append(f"trigger kwargs: {row[:300]}")
    files = [
        p
        for root in (stack.home / "logs", stack.logs, *stack.run_paths)
        for p in root.rglob("*")
        if p.is_file()
    ]
    assert any("trigger" in p.name for p in files), "no triggerer log to scan"
    assert any(p.name == "results.jsonl" for p in files) and any(p.name == "manifest.json" for p in files)
    for path in files:
        if CANARY.encode() in path.read_bytes():
            found.append(f"file {path}")
    for message in stack.failure_messages:
        if CANARY in message:
            found.append("a failure message")
    assert not found, "the API key leaked into:\n" + "\n".join(found)
