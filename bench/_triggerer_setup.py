"""What one ``triggerer.py`` phase runs on: a fresh metadata DB, the latency proxy, the Airflow
environment and the ``airflow triggerer`` process.

- :func:`database`: a SQLite file, or a new database on the PostgreSQL server at 127.0.0.1:5432
  (dropped afterwards);
- :func:`latency_proxy`: ``_triggerer_proxy.py`` in front of the emulator;
- :func:`airflow_env` and :func:`run_command`: the environment of every Airflow command of a phase,
  and a command run to its end (``airflow db migrate``, ``_triggerer_db.py``);
- :class:`Triggerer`: ``airflow triggerer`` in its own process group, with its trigger runner found.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import psutil
import sqlalchemy
from _triggerer_measure import ProcessTree
from poll import KEY

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
AIRFLOW = [sys.executable, "-m", "airflow"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def database(kind: str, home: Path) -> Iterator[str]:
    """A fresh metadata DB for one phase: yields its SQLAlchemy URL, removes it afterwards."""
    if kind == "sqlite":
        yield f"sqlite:///{home}/airflow.db"
        return
    name = f"bench_triggerer_{os.getpid()}_{secrets.token_hex(3)}"
    admin = sqlalchemy.create_engine(
        "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres", isolation_level="AUTOCOMMIT"
    )
    with admin.connect() as conn:
        conn.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    try:
        yield f"postgresql+psycopg2://postgres@127.0.0.1:5432/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(
                sqlalchemy.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n"),
                {"n": name},
            )
            conn.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}"'))
        admin.dispose()


@contextmanager
def latency_proxy(upstream_port: int, delay: float, work: Path) -> Iterator[str]:
    """Start ``_triggerer_proxy.py`` in front of the emulator; yields its base URL."""
    port_file = work / "proxy.port"
    cmd = [sys.executable, str(BENCH / "_triggerer_proxy.py"), str(upstream_port), str(delay), str(port_file)]
    cmd.append(str(work / "polls.log"))  # per-batch poll times, for the gap figures
    proc = subprocess.Popen(cmd, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while not (port_file.exists() and port_file.read_text().strip()):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the latency proxy did not start")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port_file.read_text().strip()}"
    finally:
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def airflow_env(
    home: Path,
    db_url: str,
    base_url: str,
    capacity: int,
    extra_path: str | None,
    select_per_loop: int | None = None,
) -> dict[str, str]:
    openai_conn = {"host": f"{base_url}/v1", "password": KEY}
    paths = [str(REPO), str(BENCH), *([extra_path] if extra_path else [])]
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(paths),
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": db_url,
        "AIRFLOW__CORE__DAGS_FOLDER": str(home / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(40),
        "AIRFLOW__API__SECRET_KEY": secrets.token_hex(20),
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
        "AIRFLOW__TRIGGERER__CAPACITY": str(capacity),
        **(
            {"AIRFLOW__TRIGGERER__MAX_TRIGGER_TO_SELECT_PER_LOOP": str(select_per_loop)}
            if select_per_loop
            else {}
        ),
        "AIRFLOW_CONN_BENCH_OURS": json.dumps({"conn_type": "llm_openai", **openai_conn}),
        "AIRFLOW_CONN_BENCH_OPENAI": json.dumps({"conn_type": "openai", **openai_conn}),
    }


def run_command(env: dict[str, str], cmd: list[str], timeout: float = 600) -> None:
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")


class Triggerer:
    """``airflow triggerer`` in its own process group; killed as a group on stop. Without the log
    server (it only serves log files to the UI), so the process tree is supervisor + runner."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.log = log
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                [*AIRFLOW, "triggerer", "--skip-serve-logs"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.tree = ProcessTree(psutil.Process(self.proc.pid))

    def check_running(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"triggerer exited:\n{self.log.read_text()[-3000:]}")

    def find_runner(self, timeout: float = 120) -> None:
        """The trigger runner: the supervisor's only child (the log server is not started)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_running()
            children = self.tree.supervisor.children()
            if children:
                self.tree.runner = children[0]
                return
            time.sleep(0.2)
        raise RuntimeError("the triggerer started no trigger-runner process")

    def stop(self) -> None:
        if self.proc.poll() is None:
            with suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            with suppress(subprocess.TimeoutExpired):
                self.proc.wait(20)
        with suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)
