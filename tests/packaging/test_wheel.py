"""The built wheel: supported Pythons, the typing marker, and runtime dependencies limited to what
the provider imports (test, docs and bench tools only in extras).

Checks the wheel named by ``BATCH_PROVIDER_WHEEL`` (``scripts/check-python.sh`` sets it to the
wheel under test), else one built from this checkout with ``uv build``.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import zipfile
from email.parser import Parser
from importlib.metadata import PackageNotFoundError, distribution, packages_distributions
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]
SUPPORTED = ["3.11", "3.12", "3.13", "3.14"]
# Imported only inside the functions that need them, and declared in the extra that brings them.
OPTIONAL_IMPORTS = {"pyarrow": "parquet", "moto": "emulator", "gcp_storage_emulator": "emulator"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    given = os.environ.get("BATCH_PROVIDER_WHEEL")
    if given:
        return Path(given)
    uv = shutil.which("uv") or str(Path(sys.executable).parent / "uv")
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([uv, "build", "--wheel", "--quiet", "-o", str(out), str(REPO)], check=True, timeout=120)
    (built,) = out.glob("*.whl")
    return built


@pytest.fixture(scope="module")
def metadata(wheel):
    with zipfile.ZipFile(wheel) as zf:
        (name,) = [n for n in zf.namelist() if n.endswith(".dist-info/METADATA")]
        return Parser().parsestr(zf.read(name).decode())


def test_wheel_declares_every_supported_python(metadata):
    requires = SpecifierSet(metadata["Requires-Python"])
    assert [v for v in ("3.10", *SUPPORTED, "3.15") if f"{v}.0" in requires] == SUPPORTED
    prefix = "Programming Language :: Python :: 3."
    versions = [c.rsplit(" ", 1)[1] for c in metadata.get_all("Classifier") if c.startswith(prefix)]
    assert versions == SUPPORTED
    assert f"{sys.version_info.major}.{sys.version_info.minor}" in SUPPORTED


def test_wheel_ships_the_typing_marker_and_package_data(wheel):
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
    assert "batch_provider/py.typed" in names
    assert "batch_provider/data/prices.json" in names
    assert not [n for n in names if n.startswith(("tests/", "dags/", "bench/", "docs/"))]


def runtime_requirements(metadata) -> list[Requirement]:
    reqs = [Requirement(r) for r in metadata.get_all("Requires-Dist")]
    return [r for r in reqs if r.marker is None or r.marker.evaluate({"extra": ""})]


def test_runtime_dependencies_exclude_test_docs_and_bench_tools(metadata):
    runtime = {canonicalize_name(r.name) for r in runtime_requirements(metadata)}
    tools = {"pytest", "pytest-asyncio", "pytest-timeout", "ruff", "moto", "playwright", "mkdocs",
             "mkdocs-material", "openai", "anthropic", "google-genai", "boto3", "jsonschema", "pyarrow",
             "apache-airflow-providers-celery", "apache-airflow-providers-postgres", "celery"}
    assert not runtime & tools, runtime & tools
    extras = set(metadata.get_all("Provides-Extra"))
    assert {"parquet", "emulator", "docs", "test"} <= extras


def closure(requirements: list[Requirement]) -> set[str]:
    """Distribution names the requirements pull in, transitively, as installed here."""
    seen: set[str] = set()
    todo = [(r, frozenset(r.extras)) for r in requirements]
    env = default_environment()
    while todo:
        req, extras = todo.pop()
        name = canonicalize_name(req.name)
        key = f"{name}[{','.join(sorted(extras))}]"
        if key in seen:
            continue
        seen.add(key)
        seen.add(name)
        try:
            dist = distribution(name)
        except PackageNotFoundError:
            continue  # an optional platform dependency not installed here
        for line in dist.requires or []:
            sub = Requirement(line)
            if sub.marker is None or any(sub.marker.evaluate({**env, "extra": e}) for e in {"", *extras}):
                todo.append((sub, frozenset(sub.extras)))
    return {s for s in seen if "[" not in s}


def imported_modules() -> dict[str, list[str]]:
    """Top-level third-party module -> the provider files importing it (module level or lazily)."""
    package = REPO / "batch_provider"
    if not package.is_dir():  # the tests run outside the checkout: read the installed package
        import batch_provider

        package = Path(batch_provider.__file__).parent
    found: dict[str, list[str]] = {}
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top != "batch_provider" and top not in sys.stdlib_module_names:
                    found.setdefault(top, []).append(path.name)
    return found


def test_every_import_is_covered_by_a_runtime_dependency(metadata):
    runtime = closure(runtime_requirements(metadata))
    owners = packages_distributions()
    uncovered = {}
    for module, files in imported_modules().items():
        if module in OPTIONAL_IMPORTS:
            assert OPTIONAL_IMPORTS[module] in metadata.get_all("Provides-Extra")
            continue
        dists = {canonicalize_name(d) for d in owners.get(module, [])}
        if not dists & runtime:
            uncovered[module] = sorted(set(files))
    assert not uncovered, f"imported by the provider but not a runtime dependency: {uncovered}"
