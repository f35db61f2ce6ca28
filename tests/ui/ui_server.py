"""A real Airflow API server with the provider's plugin loaded from its entry point, over a run
path holding one real run (submitted to and collected from the emulator) and synthetic index
entries; users ``admin`` (Admin) and ``scoped`` (may read ``ui_dag_a`` only)."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from batch_provider.backends.registry import create_backend
from batch_provider.core.collection import collect_run
from batch_provider.core.ledger import RunKey
from batch_provider.core.records import iter_list
from batch_provider.core.render import RequestBuilder
from batch_provider.core.run_index import write_entry
from batch_provider.core.rundir import run_directory
from batch_provider.core.submission import submit_run
from batch_provider.core.watch import watch_batches

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
KNOWN = {"dag_id": "ui_dag_a", "run_id": "manual__known", "group": "classify"}
PASSWORDS = {"admin": secrets.token_hex(8), "scoped": secrets.token_hex(8)}
API_KEY = "sk-ui-test-" + secrets.token_hex(12)
"""The provider key of the known run: it must appear in no index entry and no page response."""
DAG_FILE = """
from airflow.sdk import DAG, task

with DAG({dag_id!r}, schedule=None):
    @task
    def noop():
        pass

    noop()
"""


SETUP_DB = """
from airflow.cli.cli_parser import get_parser
for argv in (["db", "migrate"], ["dags", "reserialize"]):
    args = get_parser().parse_args(argv)
    args.func(args)
"""


@dataclass
class ApiServer:
    url: str
    home: Path
    run_path: Path
    known_manifest: dict[str, Any]

    def token(self, user: str) -> str:
        r = httpx.post(f"{self.url}/auth/token", json={"username": user, "password": PASSWORDS[user]})
        r.raise_for_status()
        return r.json()["access_token"]

    def get(self, path: str, user: str | None = None, **params: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.token(user)}"} if user else {}
        return httpx.get(f"{self.url}{path}", headers=headers, params=params, timeout=30)


def _plugin_dist(site: Path) -> None:
    """A dist-info carrying pyproject's entry points, first on the path: Airflow finds the
    plugin through the ``airflow.plugins`` entry point exactly as an installed provider's."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    lines = []
    for group, points in project["entry-points"].items():
        lines.append(f"[{group}]")
        lines += [f"{k} = {v}" for k, v in points.items()]
    dist = site / f"airflow_provider_llm_batch-{project['version']}.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n"
    )
    (dist / "entry_points.txt").write_text("\n".join(lines) + "\n")


async def _known_run(emulator: Any, base: Path) -> dict[str, Any]:
    data = [{"id": f"k-{i}", "text": f"row {i}"} for i in range(7)]
    data[4]["text"] += " [[emu:fail400]]"  # refused by the provider: an error
    del data[6]["text"]  # rejected before sending
    run_dir = run_directory(base, dag_id=KNOWN["dag_id"], run_id=KNOWN["run_id"], group=KNOWN["group"])
    key = RunKey(dag_id=KNOWN["dag_id"], task_id="classify.submit", run_id=KNOWN["run_id"])
    builder = RequestBuilder(template="Say: {{ text }}", model="gpt-6-luna", max_tokens=16)
    items = builder.render(iter_list(data))
    async with create_backend("openai", api_key=API_KEY, base_url=f"{emulator.base_url}/v1") as backend:
        tags = {"cost_centre": "support"}
        handle = await submit_run(backend, items, run_dir, run_key=key, conn_id="c", tags=tags)
        emulator.advance(2 * 86400)
        await watch_batches(backend, handle.batch_ids, deadline=None, poll_interval_min=0.05)
        await collect_run(backend, handle, run_dir)
    return json.loads(run_dir.manifest.read_text())


def synthetic_entry(
    dag_id: str, i: int, *, provider: str, model: str, centre: str, day: str
) -> dict[str, Any]:
    batch_usd = 0.01 * (1 + i % 7)
    return {
        "v": 1,
        "dag_id": dag_id,
        "run_id": f"scheduled__{day}T00:{i % 60:02d}:00+00:00_{i}",
        "task_id": "summarise.submit",
        "map_index": -1,
        "group": "summarise",
        "provider": provider,
        "models": [model],
        "rows": 100 + i,
        "succeeded": 95 + i,
        "errored": 3,
        "rejected": 2,
        "dead_letter": 0,
        "attempts": 1,
        "finished": False,
        "batch_usd": batch_usd,
        "standard_usd": 2 * batch_usd,
        "savings_usd": batch_usd,
        "unpriced_models": [],
        "tags": {"cost_centre": centre},
        "started_at": f"{day}T00:00:00+00:00",
        "completed_at": f"{day}T{i % 24:02d}:30:00+00:00",
        "completion_s": 600.0 + 60 * (i % 30),
        "batches": [{"id": f"msgbatch_{dag_id}_{i}", "model": model, "seconds": 600.0 + 60 * (i % 30)}],
        "written_at": f"{day}T{i % 24:02d}:30:00+00:00",
    }


def _synthetic(index: Path) -> None:
    for i in range(60):
        day = f"2026-11-{1 + i % 20:02d}"
        write_entry(index, f"b{i:04d}", synthetic_entry(
            "ui_dag_b", i, provider="anthropic", model="claude-haiku-4-5", centre="research", day=day
        ))
    for i in range(4):
        write_entry(index, f"a{i:04d}", synthetic_entry(
            "ui_dag_a", i, provider="openai", model="gpt-6-luna", centre="marketing", day="2026-11-10"
        ))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def api_server(emulator: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    home = tmp_path_factory.mktemp("ui-airflow-home")
    dags, site, runs = home / "dags", home / "site", home / "runs"
    dags.mkdir()
    for dag_id in ("ui_dag_a", "ui_dag_b"):
        (dags / f"{dag_id}.py").write_text(DAG_FILE.format(dag_id=dag_id))
    _plugin_dist(site)
    (home / "passwords.json").write_text(json.dumps(PASSWORDS))
    port = _free_port()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(site), str(REPO), str(HERE)]),
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
        "AIRFLOW__CORE__AUTH_MANAGER": "scoped_auth_manager.ScopedAuthManager",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin,scoped:viewer",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "passwords.json"),
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(40),
        "AIRFLOW__API__SECRET_KEY": secrets.token_hex(20),
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
        "AIRFLOW__API__WORKERS": "1",
        "BATCH_PROVIDER_RUN_PATH": f"file://{runs}",
        "BP_UI_SCOPED_USER": "scoped",
        "BP_UI_SCOPED_DAGS": "ui_dag_a",
    }
    airflow = [sys.executable, "-m", "airflow"]
    setup = subprocess.Popen(  # the slow part (one interpreter for both commands); runs are written meanwhile
        [sys.executable, "-c", SETUP_DB],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    t0 = time.monotonic()
    manifest = asyncio.run(_known_run(emulator, runs))
    _synthetic(runs / "_index")
    t1 = time.monotonic()
    _, err = setup.communicate(timeout=300)
    print(f"\nruns written in {t1 - t0:.1f} s; airflow db ready after {time.monotonic() - t0:.1f} s")
    t0 = time.monotonic()
    assert setup.returncode == 0, f"airflow db migrate / dags reserialize failed: {err.decode()[-2000:]}"
    log = (home / "api-server.log").open("wb")
    proc = subprocess.Popen(
        [*airflow, "api-server", "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/api/v2/monitor/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"api-server did not start; see {home / 'api-server.log'}")
            time.sleep(0.5)
        print(f"api-server up in {time.monotonic() - t0:.1f} s")
        yield ApiServer(url=url, home=home, run_path=runs, known_manifest=manifest)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
