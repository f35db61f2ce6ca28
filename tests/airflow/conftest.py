"""Fixtures for the Airflow tests: a migrated SQLite DB, per-test run folders, and the default LLM
connections pointing at the emulator. The environment itself comes from ``airflow_setup``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from airflow_setup import AIRFLOW_ENV, HOME, emulator_connections


@pytest.fixture(scope="session")
def airflow_home() -> Path:
    return HOME


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """A migrated SQLite metadata DB (once per session, in a subprocess like the CLI)."""
    subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"],
        check=True,
        env={**os.environ, **AIRFLOW_ENV},
        capture_output=True,
    )
    return HOME / "airflow.db"


@pytest.fixture
def run_root(tmp_path, monkeypatch) -> Path:
    """A fresh run_path base for one test."""
    root = tmp_path / "runs"
    monkeypatch.setenv("BATCH_PROVIDER_RUN_PATH", f"file://{root}")
    return root


@pytest.fixture
def llm_conns(fresh_emulator, monkeypatch):
    """The default LLM connections, pointing at a fresh emulator; yields the emulator."""
    for name, value in emulator_connections(fresh_emulator.base_url).items():
        monkeypatch.setenv(name, value)
    return fresh_emulator
