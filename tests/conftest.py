"""Shared test setup: importable checkout, a minimal Airflow environment, emulator fixtures.

Area-specific fixtures live in ``tests/<area>/conftest.py``.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

# Before anything imports airflow (it reads its configuration once). Tests never touch a real
# Airflow home, even when the developer's environment names one.
os.environ["AIRFLOW_HOME"] = tempfile.mkdtemp(prefix="bp-airflow-home-")
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")

from batch_provider.emulator.process import EmulatorProcess, running_emulator  # noqa: E402


@pytest.fixture(scope="session")
def emulator() -> Iterator[EmulatorProcess]:
    """One emulator process for the whole session (time factor 600). Do not rely on its counters
    or batch lists being empty: other tests share it. Use ``fresh_emulator`` for that."""
    with running_emulator(time_factor=600.0) as emu:
        yield emu


@pytest.fixture
def fresh_emulator() -> Iterator[EmulatorProcess]:
    """A new emulator process for one test (time factor 600, empty state, no faults)."""
    with running_emulator(time_factor=600.0) as emu:
        yield emu
