"""docker-compose.yaml and the Dockerfile: valid for Compose, and the stack the docs describe.

No engine is needed: ``docker-compose config`` (Debian's ``docker-compose`` package) parses,
interpolates and validates the file.
"""

from __future__ import annotations

import json
import os
import py_compile
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import REPO, require_binary

from batch_provider.provider_info import PROVIDER_INFO

COMPOSE = REPO / "docker-compose.yaml"
AIRFLOW_IMAGE = "apache/airflow:3.3.2-python${PYTHON_VERSION}"


def compose(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    binary = require_binary("docker-compose", "docker-compose")
    clean = {
        k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "LLM_", "_AIRFLOW", "EMULATOR"))
    }
    return subprocess.run(
        [binary, "-f", str(COMPOSE), *args],
        cwd=REPO,
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture(scope="module")
def config() -> dict:
    result = compose("config")
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def airflow_services(config: dict) -> dict[str, dict]:
    return {
        name: svc
        for name, svc in config["services"].items()
        if "AIRFLOW__CORE__EXECUTOR" in (svc.get("environment") or {})
    }


def command_of(svc: dict) -> str:
    cmd = svc.get("command") or ""
    return " ".join(cmd) if isinstance(cmd, list) else cmd


def test_compose_file_is_valid():
    result = compose("config", "-q")
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""


def test_stack_has_every_component(config):
    services = config["services"]
    for name in ("postgres", "redis", "s3", "emulator", "airflow-init", "airflow-apiserver"):
        assert name in services, name
    commands = [command_of(svc) for svc in airflow_services(config).values()]
    assert commands.count("scheduler") == 1
    assert commands.count("dag-processor") == 1
    assert commands.count("api-server") == 1
    assert commands.count("celery worker") >= 2
    assert commands.count("triggerer") == 2
    # metrics go to the optional exporter service by default
    statsd_host = services["airflow-scheduler"]["environment"]["AIRFLOW__METRICS__STATSD_HOST"]
    assert statsd_host in services and "metrics" in services[statsd_host]["profiles"]


def test_airflow_services_share_one_configuration(config):
    services = airflow_services(config)
    assert len(services) >= 8
    images = {svc["image"] for svc in services.values()}
    assert len(images) == 1
    for name, svc in services.items():
        env = svc["environment"]
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor", name
        assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://"), name
        assert env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://"), name
        assert "@postgres/" in env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"], name
        # tokens signed by the api-server must verify everywhere
        assert len(env["AIRFLOW__API_AUTH__JWT_SECRET"]) >= 64, name
        assert env["BATCH_PROVIDER_RUN_PATH"].startswith("s3://s3_store@"), name
        assert json.loads(env["AIRFLOW_CONN_S3_STORE"])["extra"]["endpoint_url"] == "http://s3:5000"
        volumes = [
            v if isinstance(v, str) else f"{v.get('source')}:{v.get('target')}" for v in svc["volumes"]
        ]
        assert any(":/opt/airflow/dags" in v for v in volumes), name
        if name not in ("airflow-init", "airflow-cli"):
            assert "airflow-init" in svc["depends_on"], name
    secrets = {svc["environment"]["AIRFLOW__API_AUTH__JWT_SECRET"] for svc in services.values()}
    assert len(secrets) == 1


def test_default_connections_point_at_the_emulator(config):
    known_types = {c["connection-type"] for c in PROVIDER_INFO["connection-types"]}
    env = config["services"]["airflow-worker"]["environment"]
    conns = {k: json.loads(v) for k, v in env.items() if k.startswith("AIRFLOW_CONN_LLM_")}
    assert set(conns) == {
        "AIRFLOW_CONN_LLM_OPENAI_DEFAULT",
        "AIRFLOW_CONN_LLM_OPENAI_COMPATIBLE_DEFAULT",
        "AIRFLOW_CONN_LLM_ANTHROPIC_DEFAULT",
    }
    for conn in conns.values():
        assert conn["conn_type"] in known_types
        assert conn["host"].startswith("http://emulator:8787")
        assert conn["password"]
    emulator = config["services"]["emulator"]
    assert emulator["image"] in {svc["image"] for svc in airflow_services(config).values()}
    assert "--port=8787" in emulator["command"]


def test_a_connections_file_switches_to_a_real_provider(tmp_path):
    real = tmp_path / "connections.env"
    real.write_text(
        'AIRFLOW_CONN_LLM_OPENAI_DEFAULT={"conn_type": "llm_openai", "password": "sk-real"}\n'
        'AIRFLOW_CONN_LLM_ANTHROPIC_DEFAULT={"conn_type": "llm_anthropic", "password": "sk-ant-real"}\n'
    )
    result = compose("config", env={"LLM_CONNECTIONS_FILE": str(real)})
    assert result.returncode == 0, result.stderr
    env = yaml.safe_load(result.stdout)["services"]["airflow-triggerer-2"]["environment"]
    assert json.loads(env["AIRFLOW_CONN_LLM_OPENAI_DEFAULT"]) == {
        "conn_type": "llm_openai",
        "password": "sk-real",
    }
    assert "host" not in json.loads(env["AIRFLOW_CONN_LLM_ANTHROPIC_DEFAULT"])
    assert "AIRFLOW_CONN_LLM_OPENAI_COMPATIBLE_DEFAULT" not in env


def test_dockerfile_installs_the_provider_into_the_airflow_image():
    text = (REPO / "Dockerfile").read_text()
    base = re.search(r"^ARG AIRFLOW_IMAGE=(\S+)", text, re.M)
    assert base and base.group(1) == AIRFLOW_IMAGE
    python = re.search(r"^ARG PYTHON_VERSION=(\S+)", text, re.M)
    assert python and python.start() < base.start()  # an ARG is usable only after its declaration
    pyproject = (REPO / "pyproject.toml").read_text()
    supported = re.findall(r"Programming Language :: Python :: (3\.\d+)", pyproject)
    assert python.group(1) in supported, (python.group(1), supported)
    assert re.search(r"^FROM \$\{AIRFLOW_IMAGE\}", text, re.M)
    install = re.search(r"^RUN pip install .*$", text, re.M)
    assert install and '"apache-airflow==${AIRFLOW_VERSION}"' in install.group(0)
    for copied in re.findall(r"^COPY \S+ (.+) /opt/provider/\S*$", text, re.M):
        for path in copied.split():
            assert (REPO / path).exists(), path


def test_init_files_exist(config):
    init = config["services"]["airflow-init"]
    script = Path(command_of(init).split()[-1])
    assert script.parts[:4] == ("/", "opt", "airflow", "deploy")
    local = REPO / "deploy" / script.name
    assert local.exists() and os.access(local, os.X_OK)
    assert "create_bucket.py" in local.read_text()
    py_compile.compile(str(REPO / "deploy" / "create_bucket.py"), doraise=True)
