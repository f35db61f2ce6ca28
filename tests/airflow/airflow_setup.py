"""The Airflow test environment, set at import before anything imports airflow (Airflow reads its
config once): an isolated AIRFLOW_HOME, a dags folder holding the example DAGs and the test DAGs,
and helpers for connections pointing at the emulator.

Test modules import names from here, not from ``conftest`` (several test folders have one).
"""

from __future__ import annotations

import json
import os
import secrets
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HOME = Path(tempfile.mkdtemp(prefix="bp-airflow-home-"))
_DAGS = HOME / "dags"
_DAGS.mkdir()
(_DAGS / "examples").symlink_to(REPO / "dags", target_is_directory=True)
(_DAGS / "test_dags").symlink_to(REPO / "tests" / "dags", target_is_directory=True)

# Airflow finds providers through installed distributions' entry points. When this checkout is
# not pip-installed, a dist-info on the path stands in for the install (same entry point as
# pyproject.toml declares), so `airflow providers hooks` and connection types work in tests.
_SITE = HOME / "site"
_DIST = _SITE / "airflow_provider_llm_batch-0.1.0.dist-info"
_DIST.mkdir(parents=True)
(_DIST / "METADATA").write_text("Metadata-Version: 2.1\nName: airflow-provider-llm-batch\nVersion: 0.1.0\n")
(_DIST / "entry_points.txt").write_text(
    "[apache_airflow_provider]\nprovider_info = batch_provider:get_provider_info\n"
)


def _installed() -> bool:
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        distribution("airflow-provider-llm-batch")
    except PackageNotFoundError:
        return False
    return True


_PATHS = [str(REPO)] + ([] if _installed() else [str(_SITE)])
sys.path[:0] = [p for p in _PATHS if p not in sys.path]

AIRFLOW_ENV = {
    "PYTHONPATH": os.pathsep.join([*_PATHS, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
    "AIRFLOW_HOME": str(HOME),
    "AIRFLOW__CORE__DAGS_FOLDER": str(_DAGS),
    "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{HOME}/airflow.db",
    "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(40),
    "AIRFLOW__API__SECRET_KEY": secrets.token_hex(20),
    "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
    "BATCH_PROVIDER_RUN_PATH": f"file://{HOME}/runs",
}
if "airflow" in sys.modules:  # pragma: no cover - a guard for test ordering mistakes
    raise RuntimeError("airflow was imported before tests/airflow/conftest.py set AIRFLOW_HOME")
os.environ.update(AIRFLOW_ENV)


API_KEY = "sk-emulator-test-key-0123456789"


def conn_json(conn_type: str, host: str, password: str = API_KEY) -> str:
    return json.dumps({"conn_type": conn_type, "host": host, "password": password})


def emulator_connections(base_url: str) -> dict[str, str]:
    """``AIRFLOW_CONN_*`` values for the default connection ids, all on one emulator."""
    return {
        "AIRFLOW_CONN_LLM_OPENAI_DEFAULT": conn_json("llm_openai", f"{base_url}/v1"),
        "AIRFLOW_CONN_LLM_OPENAI_COMPATIBLE_DEFAULT": conn_json("llm_openai_compatible", f"{base_url}/v1"),
        "AIRFLOW_CONN_LLM_ANTHROPIC_DEFAULT": conn_json("llm_anthropic", base_url),
        "AIRFLOW_CONN_LLM_GEMINI_DEFAULT": conn_json("llm_gemini", base_url),
    }
