"""The distributed Airflow stack of ``distributed.py``: its services, configuration and clean-up.

:class:`DistributedStack` creates a fresh PostgreSQL database ``bp_dist_<random>`` and claims an
empty Redis db number for the Celery broker, starts moto's S3 server, the emulator, ``airflow db
migrate``, then api-server, scheduler, dag-processor, the Celery workers and the triggerers (each a
process group of its own, see ``_process_groups.py``), all configured through one environment; it
waits until the example DAGs are registered and the workers are ready. :meth:`~DistributedStack.stop`
kills every group, drops the database, flushes the Redis db and removes its temporary directory.
Queries and REST calls come from :class:`~_distributed_clients.StackClients`.

Environment: ``BP_PG_DSN`` (admin DSN of the PostgreSQL server, default
``postgresql://postgres@127.0.0.1:5432/postgres``), ``BP_REDIS_HOST`` / ``BP_REDIS_PORT``
(default 127.0.0.1:6379).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from _distributed_clients import ADMIN_USER, RUN_BUCKET, StackClients, pg_connect
from _process_groups import ProcessGroups, free_port

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
BIN = Path(PYTHON).parent

PG_DSN = os.environ.get("BP_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_HOST = os.environ.get("BP_REDIS_HOST", "127.0.0.1")
REDIS_PORT = int(os.environ.get("BP_REDIS_PORT", "6379"))

S3_CONN_ID = "bp_s3"

# Emulated seconds: validating 30 + processing 1200 + 2 per request + finalizing 60 ≈ 1350 for the
# 30 tickets. At a time factor of 30 a batch runs for about 45 real seconds: long enough for the
# four runs to reach their wait on a busy 2-core machine, to kill a triggerer while the batches are
# in flight, and to let the other one take over.
DEFAULT_TIME_FACTOR = 30.0

# The example DAGs the stack waits for at start: those of the fail-over scenario and the UI test.
EXAMPLE_DAGS = ("nightly_ticket_enrichment", "document_summarisation", "historical_backfill", "manual_batch")


def _redis_command(db: int, *args: str) -> str:
    """One Redis command over a raw socket (RESP), so no client library is needed here."""
    parts = [b"SELECT", str(db).encode()]
    payload = b"*2\r\n" + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)
    cmd = [a.encode() for a in args]
    payload += b"*%d\r\n" % len(cmd) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in cmd)
    with socket.create_connection((REDIS_HOST, REDIS_PORT), timeout=5) as s:
        s.sendall(payload)
        data = b""
        while data.count(b"\r\n") < 2:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    lines = data.split(b"\r\n")
    if not lines[0].startswith(b"+OK"):
        raise RuntimeError(f"redis SELECT {db} failed: {lines[0]!r}")
    reply = lines[1].decode()
    if reply.startswith("-"):
        raise RuntimeError(f"redis {args[0]} failed: {reply}")
    return reply[1:]


@dataclass
class DistributedStack(StackClients):
    """Start with :meth:`start` (or ``with``), stop with :meth:`stop`; every process it starts is
    the leader of its own process group, recorded in ``pids.json``, and killed with its group."""

    workdir: Path | None = None
    time_factor: float = DEFAULT_TIME_FACTOR
    workers: int = 2
    triggerers: int = 2
    worker_concurrency: int = 2
    parallelism: int = 4
    poll_interval: float = 2.0
    keep_workdir: bool = False
    timings: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._own_workdir = self.workdir is None
        self.workdir = Path(self.workdir or tempfile.mkdtemp(prefix="bp-dist-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.home = self.workdir / "airflow-home"
        self.logs = self.workdir / "component-logs"
        self.procs = ProcessGroups(self.workdir, self.logs)
        self.db_name = f"bp_dist_{secrets.token_hex(4)}"
        self.redis_db: int | None = None
        self.api_port = free_port()
        self.emulator_port = free_port()
        self.s3_port = free_port()
        self.password = secrets.token_urlsafe(12)
        self.triggerer_jobs: dict[str, int] = {}
        self._db_created = False
        self._stopped = False
        self._jwt = secrets.token_hex(40)
        self._secret = secrets.token_hex(20)
        self._worker_log_port = free_port()
        self._trigger_log_port = free_port()

    # ------------------------------------------------------------------ addresses

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def emulator_url(self) -> str:
        return f"http://127.0.0.1:{self.emulator_port}"

    @property
    def s3_url(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    @property
    def db_dsn(self) -> str:
        base = PG_DSN.rsplit("/", 1)[0]
        return f"{base}/{self.db_name}"

    @property
    def run_path(self) -> str:
        return f"s3://{S3_CONN_ID}@{RUN_BUCKET}/llm-batch"

    def env(self) -> dict[str, str]:
        key = "sk-emulator-" + "0" * 16
        conn = lambda t, host: json.dumps({"conn_type": t, "host": host, "password": key})  # noqa: E731
        sqlalchemy = self.db_dsn.replace("postgresql://", "postgresql+psycopg2://", 1)
        return {
            **{k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")},
            "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p),
            "AIRFLOW_HOME": str(self.home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            "AIRFLOW__CORE__PARALLELISM": str(self.parallelism),
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.api_url}/execution/",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{ADMIN_USER}:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(self.home / "passwords.json"),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": sqlalchemy,
            "AIRFLOW__CELERY__BROKER_URL": f"redis://{REDIS_HOST}:{REDIS_PORT}/{self.redis_db}",
            "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + self.db_dsn,
            "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(self.worker_concurrency),
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(self.api_port),
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__API__BASE_URL": self.api_url,
            "AIRFLOW__API_AUTH__JWT_SECRET": self._jwt,
            "AIRFLOW__API__SECRET_KEY": self._secret,
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(self._worker_log_port),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(self._trigger_log_port),
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "10",
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
            # Manual runs only: the example DAGs' schedules would start runs for dates that have no
            # sample input. A real deployment keeps the default (True).
            "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
            # Triggerer HA: heartbeat every second; a triggerer silent for 5 s is dead and its
            # triggers go to a live one (defaults: 5 s and 30 s).
            "AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC": "1",
            "AIRFLOW__TRIGGERER__TRIGGERER_HEALTH_CHECK_THRESHOLD": "5",
            "AIRFLOW__TRIGGERER__CAPACITY": "100",
            "BATCH_PROVIDER_RUN_PATH": self.run_path,
            "BATCH_EXAMPLES_POLL_INTERVAL": str(self.poll_interval),
            f"AIRFLOW_CONN_{S3_CONN_ID.upper()}": json.dumps(
                {
                    "conn_type": "aws",
                    "login": "testing",
                    "password": "testing",
                    "extra": {"region_name": "us-east-1", "endpoint_url": self.s3_url},
                }
            ),
            "AIRFLOW_CONN_LLM_OPENAI_DEFAULT": conn("llm_openai", f"{self.emulator_url}/v1"),
            "AIRFLOW_CONN_LLM_OPENAI_COMPATIBLE_DEFAULT": conn(
                "llm_openai_compatible", f"{self.emulator_url}/v1"
            ),
            "AIRFLOW_CONN_LLM_ANTHROPIC_DEFAULT": conn("llm_anthropic", self.emulator_url),
        }

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> DistributedStack:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> DistributedStack:
        t0 = time.monotonic()
        atexit.register(self.stop)
        self.home.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        (self.home / "passwords.json").write_text(json.dumps({ADMIN_USER: self.password}))
        self._create_database()
        self._claim_redis_db()
        self._spawn(
            "s3",
            [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(self.s3_port)],
        )
        self._spawn(
            "emulator",
            [
                PYTHON,
                "-m",
                "batch_provider.emulator",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.emulator_port),
                "--time-factor",
                repr(float(self.time_factor)),
                "--data-dir",
                str(self.workdir / "emulator-data"),
            ],
        )
        self.procs.wait_http(f"{self.emulator_url}/_emu/health", "emulator")
        self.procs.wait_http(f"{self.s3_url}/moto-api/", "s3")
        httpx.put(f"{self.s3_url}/{RUN_BUCKET}", timeout=10).raise_for_status()
        migrate = subprocess.run(
            [PYTHON, "-m", "airflow", "db", "migrate"],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=300,
        )
        if migrate.returncode != 0:
            raise RuntimeError(f"airflow db migrate failed:\n{migrate.stderr[-4000:]}")
        self.timings["migrate_s"] = round(time.monotonic() - t0, 1)

        self._spawn("api-server", [PYTHON, "-m", "airflow", "api-server"])
        self._spawn("scheduler", [PYTHON, "-m", "airflow", "scheduler"])
        self._spawn("dag-processor", [PYTHON, "-m", "airflow", "dag-processor"])
        for i in range(1, self.workers + 1):
            self._spawn(
                f"worker-{i}",
                [
                    PYTHON,
                    "-m",
                    "airflow",
                    "celery",
                    "worker",
                    "--celery-hostname",
                    f"worker{i}@%h",
                    "--concurrency",
                    str(self.worker_concurrency),
                    # one log server per host is enough: the others would clash on its port
                    *([] if i == 1 else ["--skip-serve-logs"]),
                ],
            )
        for i in range(1, self.triggerers + 1):
            known = set(self._triggerer_job_ids())
            name = f"triggerer-{i}"
            self._spawn(
                name,
                [PYTHON, "-m", "airflow", "triggerer", *([] if i == 1 else ["--skip-serve-logs"])],
            )
            # Start them one after the other, to tell their job rows apart (same hostname).
            self.triggerer_jobs[name] = self.wait_for(
                lambda known=known: next(iter(set(self._triggerer_job_ids()) - known), None),
                90,
                f"{name} never registered its job",
            )
        self.procs.wait_http(f"{self.api_url}/api/v2/monitor/health", "api-server", timeout=120)
        self.wait_for(self._dags_registered, 180, "the dag-processor never registered the example DAGs")
        self.wait_for(self._workers_ready, 120, "the Celery workers never came up")
        self.timings["startup_s"] = round(time.monotonic() - t0, 1)
        return self

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self.close_clients()
        self.procs.stop_all()
        if self._db_created:
            try:
                with contextlib.closing(pg_connect(PG_DSN)) as conn, conn.cursor() as cur:
                    cur.execute(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)')
            except Exception as exc:  # pragma: no cover - reported, not fatal
                print(f"could not drop database {self.db_name}: {exc}", file=sys.stderr)
        if self.redis_db is not None:
            with contextlib.suppress(Exception):
                _redis_command(self.redis_db, "FLUSHDB")
        if self._own_workdir and not self.keep_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def _create_database(self) -> None:
        with contextlib.closing(pg_connect(PG_DSN)) as conn, conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{self.db_name}"')
        self._db_created = True

    def _claim_redis_db(self) -> None:
        """An empty Redis db number from 15 down (db 0 is left to others)."""
        for db in range(15, 0, -1):
            # SET NX makes the claim atomic: two stacks starting at once never share a broker
            if (
                _redis_command(db, "DBSIZE") == "0"
                and _redis_command(db, "SET", "bp-dist-claim", self.db_name, "NX") == "OK"
            ):
                self.redis_db = db
                return
        raise RuntimeError("no empty Redis database (1-15) to use as the Celery broker")

    def _spawn(self, name: str, cmd: list[str]) -> None:
        self.procs.spawn(name, cmd, self.env())

    def _triggerer_job_ids(self) -> list[int]:
        try:
            return [r[0] for r in self.sql("select id from job where job_type = 'TriggererJob'")]
        except Exception:
            return []

    def _dags_registered(self) -> bool:
        try:
            rows = self.sql("select dag_id from dag where not is_stale")
        except Exception:
            return False
        return set(EXAMPLE_DAGS) <= {r[0] for r in rows}

    def _workers_ready(self) -> bool:
        return all("ready." in self.tail(f"worker-{i}", chars=100_000) for i in range(1, self.workers + 1))

    # ------------------------------------------------------------------ processes

    def wait_for(self, probe: Any, timeout: float, message: str, interval: float = 0.5) -> Any:
        """Poll ``probe`` until it returns something true (see :meth:`ProcessGroups.wait_for`)."""
        return self.procs.wait_for(probe, timeout, message, interval)

    def tail(self, name: str | None = None, chars: int = 2500) -> str:
        return self.procs.tail(name, chars)

    def alive_triggerer(self, name: str) -> bool:
        return self.procs.alive(name)

    def kill(self, name: str) -> None:
        """SIGKILL a component and its whole process group: no clean shutdown, no last heartbeat."""
        self.procs.kill(name)

    def memory_mb(self) -> dict[str, float]:
        """PSS of each component's process group, in MB."""
        return self.procs.memory_mb()
