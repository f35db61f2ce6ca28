"""A distributed Airflow deployment of the provider on one machine, and a triggerer fail-over run.

The stack, every part a separate process:

- PostgreSQL metadata DB: a fresh database ``bp_dist_<random>`` on the local server, dropped after;
- CeleryExecutor on the local Redis, on a Redis db number of its own (flushed after);
- api-server, scheduler, dag-processor, two Celery workers and two triggerers;
- the Batch API emulator, and moto's S3 server holding the run folders (``s3://bp_s3@bp-runs/...``),
  as the docker-compose stack does with its ``emulator`` and ``s3`` services.

``python scripts/distributed.py`` starts the stack, triggers the example DAGs through the REST API,
SIGKILLs the triggerer that holds the waiting triggers while their batches run, checks that the
other triggerer takes them over, that every run succeeds and that no batch was created twice, then
stops everything (also on failure or Ctrl-C) and prints a report as JSON.

``tests/deployment`` uses the same :class:`DistributedStack`.

Environment: ``BP_PG_DSN`` (admin DSN of the PostgreSQL server, default
``postgresql://postgres@127.0.0.1:5432/postgres``), ``BP_REDIS_HOST`` / ``BP_REDIS_PORT``
(default 127.0.0.1:6379).
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
BIN = Path(PYTHON).parent

PG_DSN = os.environ.get("BP_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_HOST = os.environ.get("BP_REDIS_HOST", "127.0.0.1")
REDIS_PORT = int(os.environ.get("BP_REDIS_PORT", "6379"))

ADMIN_USER = "admin"
S3_CONN_ID = "bp_s3"
RUN_BUCKET = "bp-runs"

# Emulated seconds: validating 30 + processing 1200 + 2 per request + finalizing 60 ≈ 1350 for the
# 30 tickets. At a time factor of 30 a batch runs for about 45 real seconds: long enough for the
# four runs to reach their wait on a busy 2-core machine, to kill a triggerer while the batches are
# in flight, and to let the other one take over.
DEFAULT_TIME_FACTOR = 30.0

# The runs of the fail-over scenario: (dag_id, logical date, conf). The logical dates pick the
# sample inputs in dags/data (a daily run's data interval is the day before its logical date).
SCENARIO_RUNS: tuple[tuple[str, str | None, dict[str, Any]], ...] = (
    ("nightly_ticket_enrichment", "2026-11-21T00:00:00Z", {}),
    ("document_summarisation", None, {}),
    ("historical_backfill", "2026-04-01T00:00:00Z", {}),
    (
        "manual_batch",
        None,
        {"provider": "anthropic", "model": "claude-haiku-4-5", "max_tokens": 120, "max_attempts": 2},
    ),
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pg_connect(dsn: str, autocommit: bool = True) -> Any:
    import psycopg2

    conn = psycopg2.connect(dsn)
    conn.autocommit = autocommit
    return conn


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
class Component:
    name: str
    proc: subprocess.Popen
    log: Path
    killed: bool = False


@dataclass
class DistributedStack:
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
    components: dict[str, Component] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._own_workdir = self.workdir is None
        self.workdir = Path(self.workdir or tempfile.mkdtemp(prefix="bp-dist-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.home = self.workdir / "airflow-home"
        self.logs = self.workdir / "component-logs"
        self.db_name = f"bp_dist_{secrets.token_hex(4)}"
        self.redis_db: int | None = None
        self.api_port = free_port()
        self.emulator_port = free_port()
        self.s3_port = free_port()
        self.password = secrets.token_urlsafe(12)
        self.triggerer_jobs: dict[str, int] = {}
        self._db_created = False
        self._token: str | None = None
        self._token_at = 0.0
        self._client: httpx.Client | None = None
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
        self._wait_http(f"{self.emulator_url}/_emu/health", "emulator")
        self._wait_http(f"{self.s3_url}/moto-api/", "s3")
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
            self.triggerer_jobs[name] = self._wait_for(
                lambda known=known: next(iter(set(self._triggerer_job_ids()) - known), None),
                90,
                f"{name} never registered its job",
            )
        self._wait_http(f"{self.api_url}/api/v2/monitor/health", "api-server", timeout=120)
        self._wait_for(self._dags_registered, 180, "the dag-processor never registered the example DAGs")
        self._wait_for(self._workers_ready, 120, "the Celery workers never came up")
        self.timings["startup_s"] = round(time.monotonic() - t0, 1)
        return self

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self._client is not None:
            self._client.close()
        alive = [c for c in self.components.values() if c.proc.poll() is None]
        for comp in alive:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(comp.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for comp in self.components.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                comp.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            # children (task supervisors, Celery pool processes) may outlive their leader
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(comp.proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                comp.proc.wait(timeout=5)
        if self._db_created:
            try:
                with contextlib.closing(_pg_connect(PG_DSN)) as conn, conn.cursor() as cur:
                    cur.execute(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)')
            except Exception as exc:  # pragma: no cover - reported, not fatal
                print(f"could not drop database {self.db_name}: {exc}", file=sys.stderr)
        if self.redis_db is not None:
            with contextlib.suppress(Exception):
                _redis_command(self.redis_db, "FLUSHDB")
        if self._own_workdir and not self.keep_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def _create_database(self) -> None:
        with contextlib.closing(_pg_connect(PG_DSN)) as conn, conn.cursor() as cur:
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

    def _spawn(self, name: str, cmd: list[str]) -> Component:
        log = self.logs / f"{name}.log"
        with log.open("ab") as fh:
            proc = subprocess.Popen(
                cmd,
                env=self.env(),
                cwd=self.workdir,
                stdout=fh,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        comp = Component(name, proc, log)
        self.components[name] = comp
        (self.workdir / "pids.json").write_text(
            json.dumps({n: c.proc.pid for n, c in self.components.items()}, indent=1)
        )
        return comp

    def _wait_http(self, url: str, name: str, timeout: float = 60) -> None:
        def ok() -> bool:
            comp = self.components.get(name)
            if comp is not None and comp.proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {comp.proc.returncode}:\n{self.tail(name)}")
            try:
                return httpx.get(url, timeout=2).status_code < 500
            except httpx.HTTPError:
                return False

        self._wait_for(ok, timeout, f"{name} did not answer on {url}")

    def _wait_for(self, probe: Any, timeout: float, message: str, interval: float = 0.5) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for comp in self.components.values():
                if comp.proc.poll() is not None and not comp.killed:
                    raise RuntimeError(
                        f"{comp.name} exited with {comp.proc.returncode}:\n{self.tail(comp.name)}"
                    )
            value = probe()
            if value:
                return value
            time.sleep(interval)
        raise TimeoutError(f"{message} within {timeout:.0f}s\n{self.tail()}")

    def tail(self, name: str | None = None, chars: int = 2500) -> str:
        names = [name] if name else list(self.components)
        out = []
        for n in names:
            path = self.logs / f"{n}.log"
            if path.exists():
                out.append(f"--- {n}\n{path.read_text(errors='replace')[-chars:]}")
        return "\n".join(out)

    # ------------------------------------------------------------------ metadata DB

    def sql(self, query: str, params: tuple = ()) -> list[tuple]:
        with contextlib.closing(_pg_connect(self.db_dsn)) as conn, conn.cursor() as cur:
            cur.execute(query, params)
            return cur.fetchall() if cur.description else []

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
        wanted = {d for d, _, _ in SCENARIO_RUNS}
        return wanted <= {r[0] for r in rows}

    def _workers_ready(self) -> bool:
        return all("ready." in self.tail(f"worker-{i}", chars=100_000) for i in range(1, self.workers + 1))

    def trigger_assignment(self) -> dict[int, int | None]:
        """``{trigger id: triggerer job id}`` of the triggers in the metadata DB."""
        return dict(self.sql("select id, triggerer_id from trigger"))

    def triggers_of_tasks(self) -> dict[str, int]:
        """``{"dag_id/run_id/task_id": trigger id}`` of the deferred task instances."""
        rows = self.sql(
            "select dag_id, run_id, task_id, trigger_id from task_instance where trigger_id is not null"
        )
        return {f"{d}/{r}/{t}": tid for d, r, t, tid in rows}

    def alive_triggerer(self, name: str) -> bool:
        comp = self.components[name]
        return comp.proc.poll() is None

    # ------------------------------------------------------------------ REST API

    def token(self) -> str:
        if self._token is None or time.monotonic() - self._token_at > 600:
            resp = httpx.post(
                f"{self.api_url}/auth/token",
                json={"username": ADMIN_USER, "password": self.password},
                timeout=30,
            )
            resp.raise_for_status()
            self._token = resp.json()["access_token"]
            self._token_at = time.monotonic()
        return self._token

    def api(self, method: str, path: str, **kw: Any) -> Any:
        if self._client is None:
            self._client = httpx.Client(base_url=f"{self.api_url}/api/v2", timeout=60)
        resp = self._client.request(method, path, headers={"Authorization": f"Bearer {self.token()}"}, **kw)
        if resp.status_code >= 400:
            raise RuntimeError(f"{method} {path} -> {resp.status_code}: {resp.text[:1000]}")
        return resp.json() if resp.content else None

    def trigger(self, dag_id: str, logical_date: str | None = None, conf: dict | None = None) -> str:
        body = {"logical_date": logical_date, "conf": conf or {}}
        return self.api("POST", f"/dags/{dag_id}/dagRuns", json=body)["dag_run_id"]

    def run_state(self, dag_id: str, run_id: str) -> str:
        return self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}")["state"]

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str | None]:
        tis = self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances")["task_instances"]
        return {ti["task_id"]: ti["state"] for ti in tis}

    def wait_runs(self, runs: dict[str, str], timeout: float = 300) -> dict[str, str]:
        """Wait until every ``{run_id: dag_id}`` run has finished; returns their states."""
        final: dict[str, str] = {}

        def done() -> bool:
            for run_id, dag_id in runs.items():
                if run_id not in final:
                    state = self.run_state(dag_id, run_id)
                    if state in ("success", "failed"):
                        final[run_id] = state
            return len(final) == len(runs)

        self._wait_for(done, timeout, f"runs still going: {set(runs) - set(final)}", interval=2)
        return final

    # ------------------------------------------------------------------ emulator and S3

    def emulator_stats(self) -> dict[str, Any]:
        return httpx.get(f"{self.emulator_url}/_emu/stats", timeout=10).json()

    def batch_status(self, provider: str, batch_id: str) -> str:
        headers = {"Authorization": "Bearer sk-emulator", "anthropic-version": "2023-06-01"}
        if provider == "anthropic":
            url = f"{self.emulator_url}/v1/messages/batches/{batch_id}"
            return httpx.get(url, headers=headers, timeout=10).json()["processing_status"]
        return httpx.get(f"{self.emulator_url}/v1/batches/{batch_id}", headers=headers, timeout=10).json()[
            "status"
        ]

    def s3_client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.s3_url,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        )

    def s3_json(self, key: str) -> Any:
        return json.loads(self.s3_client().get_object(Bucket=RUN_BUCKET, Key=key)["Body"].read())

    def ledgers(self) -> dict[str, dict]:
        """Every ``ledger.json`` under the run path: ``{key: ledger}``."""
        s3 = self.s3_client()
        out = {}
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=RUN_BUCKET):
            for obj in page.get("Contents", []):
                if obj["Key"].endswith("/ledger.json"):
                    out[obj["Key"]] = self.s3_json(obj["Key"])
        return out

    def manifests(self) -> dict[str, dict]:
        s3 = self.s3_client()
        out = {}
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=RUN_BUCKET):
            for obj in page.get("Contents", []):
                if obj["Key"].endswith("/manifest.json"):
                    out[obj["Key"]] = self.s3_json(obj["Key"])
        return out

    # ------------------------------------------------------------------ measurements

    def memory_mb(self) -> dict[str, float]:
        """PSS of each component's process group, in MB (from /proc/<pid>/smaps_rollup)."""
        groups: dict[int, str] = {c.proc.pid: c.name for c in self.components.values() if not c.killed}
        totals: dict[str, float] = dict.fromkeys(groups.values(), 0.0)
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                pgid = os.getpgid(int(entry.name))
                if pgid not in groups:
                    continue
                for line in (entry / "smaps_rollup").read_text().splitlines():
                    if line.startswith("Pss:"):
                        totals[groups[pgid]] += int(line.split()[1]) / 1024
            except (OSError, ProcessLookupError, ValueError):
                continue
        return {k: round(v, 1) for k, v in totals.items()}

    def kill(self, name: str) -> None:
        """SIGKILL a component and its whole process group: no clean shutdown, no last heartbeat."""
        comp = self.components[name]
        comp.killed = True
        os.killpg(comp.proc.pid, signal.SIGKILL)
        comp.proc.wait(timeout=10)


# ---------------------------------------------------------------------- the fail-over scenario


def batches_of(ledger: dict) -> list[tuple[str, str]]:
    """``[(provider, batch_id)]`` of every chunk of every attempt in a ledger."""
    return [
        (ledger["provider"], chunk["batch"]["batch_id"])
        for attempt in ledger["attempts"].values()
        for chunk in attempt["chunks"]
        if chunk.get("batch")
    ]


def chunk_count(ledger: dict) -> int:
    return sum(len(a["chunks"]) for a in ledger["attempts"].values())


@dataclass
class FailoverReport:
    runs: dict[str, str] = field(default_factory=dict)
    final_states: dict[str, str] = field(default_factory=dict)
    task_states: dict[str, dict[str, str | None]] = field(default_factory=dict)
    killed: str = ""
    survivor: str = ""
    triggers_moved: dict[int, tuple[int | None, int | None]] = field(default_factory=dict)
    moved_tasks: dict[int, str] = field(default_factory=dict)
    """``{trigger id: "dag_id/run_id/task_id"}`` of the triggers the killed triggerer held."""
    batch_status_at_kill: dict[str, str] = field(default_factory=dict)
    chunks: int = 0
    batch_ids: list[str] = field(default_factory=list)
    batches_created: dict[str, int] = field(default_factory=dict)
    manifests: dict[str, dict] = field(default_factory=dict)
    memory_mb: dict[str, float] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items()}


def run_failover(stack: DistributedStack, log: Any = print) -> FailoverReport:
    """Trigger the scenario runs, SIGKILL the triggerer holding their triggers mid-wait, wait for
    every run to end. Collects what happened; the caller (script or test) judges it."""
    report = FailoverReport()
    t0 = time.monotonic()
    for dag_id, logical_date, conf in SCENARIO_RUNS:
        run_id = stack.trigger(dag_id, logical_date, conf)
        report.runs[run_id] = dag_id
        log(f"triggered {dag_id}: {run_id}")

    # Kill once every run's wait task has been deferred (or has already finished), at a moment
    # when triggers are held: best when all four wait at once, but a loaded machine may let an
    # early batch end before the last run defers.
    seen_deferred: set[str] = set()

    def kill_moment() -> dict[str, int] | None:
        waits = {k: v for k, v in stack.triggers_of_tasks().items() if k.endswith(".wait")}
        assignment = stack.trigger_assignment()
        held = {k: t for k, t in waits.items() if assignment.get(t) is not None}
        seen_deferred.update(k.rsplit("/", 1)[0] for k in held)
        done = {
            f"{d}/{r}"
            for d, r in stack.sql(
                "select dag_id, run_id from task_instance where task_id like '%%.wait' and state = 'success'"
            )
        }
        runs = {f"{d}/{r}" for r, d in report.runs.items()}
        if len(held) == len(runs) or (held and runs <= seen_deferred | done):
            return held
        return None

    waits = stack._wait_for(kill_moment, 300, "the wait tasks never got deferred", interval=0.5)
    report.timings["deferred_s"] = round(time.monotonic() - t0, 1)
    report.memory_mb = stack.memory_mb()
    assignment = stack.trigger_assignment()
    by_job = {job: name for name, job in stack.triggerer_jobs.items()}
    counts = {
        name: sum(1 for tid in waits.values() if assignment.get(tid) == job) for job, name in by_job.items()
    }
    victim = max(counts, key=counts.get)
    report.killed = victim
    report.survivor = next(n for n in stack.triggerer_jobs if n != victim)
    log(f"{len(waits)} of {len(report.runs)} wait triggers held, per triggerer: {counts}; SIGKILL {victim}")

    held_runs = {
        key.split("/")[1] for key, tid in waits.items() if assignment.get(tid) == stack.triggerer_jobs[victim]
    }
    for ledger in stack.ledgers().values():
        if ledger["run_key"]["run_id"] in held_runs:
            for provider, batch_id in batches_of(ledger):
                report.batch_status_at_kill[batch_id] = stack.batch_status(provider, batch_id)
    victim_job = stack.triggerer_jobs[victim]
    survivor_job = stack.triggerer_jobs[report.survivor]
    moved = {tid: assignment[tid] for tid in waits.values() if assignment.get(tid) == victim_job}
    report.moved_tasks = {tid: key for key, tid in waits.items() if tid in moved}
    stack.kill(victim)
    report.timings["killed_at_s"] = round(time.monotonic() - t0, 1)

    # Watch the dead triggerer's triggers move to the survivor (or fire there and disappear).
    seen: dict[int, int | None] = {}

    def taken_over() -> bool:
        now = stack.trigger_assignment()
        for tid in moved:
            if tid in now and now[tid] not in (None, victim_job):
                seen[tid] = now[tid]
        return all(tid in seen for tid in moved) or not any(t in now for t in moved)

    stack._wait_for(taken_over, 120, "the dead triggerer's triggers were never reassigned", interval=0.5)
    report.triggers_moved = {tid: (victim_job, seen.get(tid)) for tid in moved}
    report.timings["taken_over_s"] = round(time.monotonic() - t0, 1)
    log(f"triggers reassigned: {report.triggers_moved} (survivor job {survivor_job})")

    report.final_states = stack.wait_runs(report.runs, timeout=300)
    report.timings["runs_done_s"] = round(time.monotonic() - t0, 1)
    for run_id, dag_id in report.runs.items():
        report.task_states[run_id] = stack.task_states(dag_id, run_id)
    ledgers = stack.ledgers()
    report.chunks = sum(chunk_count(ledger) for ledger in ledgers.values())
    report.batch_ids = [b for ledger in ledgers.values() for _, b in batches_of(ledger)]
    report.batches_created = stack.emulator_stats()["batches_created"]
    report.manifests = stack.manifests()
    report.timings.update(stack.timings)
    return report


def problems(report: FailoverReport) -> list[str]:
    """What is wrong with a fail-over run (empty when it is right)."""
    out = []
    bad = {r: s for r, s in report.final_states.items() if s != "success"}
    if bad:
        out.append(f"runs not successful: {bad}")
    if not report.triggers_moved:
        out.append("the killed triggerer held no trigger")
    if any(new is None or new == old for old, new in report.triggers_moved.values()):
        out.append(f"not every trigger was taken over: {report.triggers_moved}")
    ended = {b: s for b, s in report.batch_status_at_kill.items() if s in ("completed", "ended")}
    if ended:
        out.append(f"batches had already ended when the triggerer was killed: {ended}")
    created = sum(report.batches_created.values())
    if created != report.chunks:
        out.append(f"{created} batches created for {report.chunks} chunks")
    if len(set(report.batch_ids)) != len(report.batch_ids):
        out.append("a batch id is recorded twice in the ledgers")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--time-factor", type=float, default=DEFAULT_TIME_FACTOR)
    parser.add_argument("--workdir", type=Path, help="keep logs and state here (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir with the component logs")
    args = parser.parse_args(argv)

    stack = DistributedStack(workdir=args.workdir, time_factor=args.time_factor, keep_workdir=args.keep)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda *_: sys.exit(1))  # unwinds through the with block: stop() runs
    t0 = time.monotonic()
    with stack:
        print(
            f"stack up in {stack.timings['startup_s']} s: api {stack.api_url}, db {stack.db_name}, "
            f"redis db {stack.redis_db}, logs {stack.logs}",
            flush=True,
        )
        report = run_failover(stack, log=lambda m: print(m, flush=True))
        wrong = problems(report)
    report.timings["total_s"] = round(time.monotonic() - t0, 1)
    print(json.dumps(report.as_dict(), indent=1, default=str))
    for line in wrong:
        print("PROBLEM:", line, file=sys.stderr)
    return 1 if wrong else 0


if __name__ == "__main__":
    raise SystemExit(main())
