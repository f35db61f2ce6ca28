"""Deployment tests: the compose file, and a distributed stack of real processes on this machine
(scripts/distributed.py): PostgreSQL, CeleryExecutor on Redis, two workers, two triggerers.

Needs the local PostgreSQL (``BP_PG_DSN``, default postgres@127.0.0.1:5432, trust auth) and Redis
(127.0.0.1:6379), the ``test`` extra's Celery/Postgres/Playwright packages, and Debian's
``chromium`` for the UI test. A missing piece fails the test with what to install: these tests
are meant to run in CI, not to be skipped there.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
CHROMIUM = os.environ.get("BP_CHROMIUM", "/usr/bin/chromium")

REQUIRED_MODULES = {
    "celery": "apache-airflow-providers-celery (and celery<5.7)",
    "airflow.providers.celery": "apache-airflow-providers-celery",
    "psycopg2": "psycopg2-binary (apache-airflow-providers-postgres)",
    "playwright": "playwright",
}


def _load_distributed():
    spec = importlib.util.spec_from_file_location("bp_distributed", REPO / "scripts" / "distributed.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


distributed = _load_distributed()


def require(modules: dict[str, str]) -> None:
    missing = [hint for name, hint in modules.items() if importlib.util.find_spec(name) is None]
    if missing:
        pytest.fail(
            "missing Python packages for the deployment tests: "
            + ", ".join(sorted(set(missing)))
            + " (they belong in the project's test extra)",
            pytrace=False,
        )


def require_binary(path_or_name: str, apt_package: str) -> str:
    found = shutil.which(path_or_name)
    if not found:
        pytest.fail(
            f"{path_or_name} not found: install Debian's {apt_package} "
            f"(apt-get update && apt-get install -y {apt_package})",
            pytrace=False,
        )
    return found


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    """Screenshots and reports of this session: tests/deployment/artifacts/<UTC time>/ (git-ignored)."""
    path = ARTIFACTS / time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    path.mkdir(parents=True, exist_ok=True)
    print(f"\ndeployment test artifacts: {path}")
    return path


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[distributed.DistributedStack]:
    """The distributed stack, started once for the module and always stopped (process groups
    killed, database dropped, Redis db flushed). Logs stay under pytest's tmp dir."""
    require({k: v for k, v in REQUIRED_MODULES.items() if k != "playwright"})
    workdir = tmp_path_factory.mktemp("dist-stack")
    stack = distributed.DistributedStack(workdir=workdir)
    try:
        stack.start()
    except BaseException:
        stack.stop()
        raise
    print(f"\nstack up in {stack.timings['startup_s']} s; component logs in {stack.logs}")
    try:
        yield stack
    finally:
        stack.stop()
