#!/usr/bin/env bash
# Prove the built wheel works on one Python version, from a clean venv:
#   1. install the wheel alone (runtime dependencies only) and import the provider;
#   2. add the `test` extra and run the unit tests plus example DAGs end to end with `dag.test()`
#      against the emulator -- against the installed wheel, not this checkout.
#
# Usage: scripts/check-python.sh 3.12 [path/to/wheel]   (builds the wheel when none is given)
# Needs `uv` (UV=... or on PATH) and the interpreter `pythonX.Y` (on PATH or under pyenv).
# Every failing step fails the script; pytest's "no tests collected" (exit 5) is a failure too.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD

VERSION=${1:?usage: scripts/check-python.sh X.Y [wheel]}
WHEEL=${2:-}
UV=${UV:-$(command -v uv || echo "$REPO/.venv/bin/uv")}
export UV_PYTHON_DOWNLOADS=never  # no network beyond the package index: never fetch interpreters

find_python() {
  # A pyenv shim on PATH exists but fails when the version is not active: run it to be sure.
  if command -v "python$1" >/dev/null 2>&1 && "python$1" -c 'import sys' >/dev/null 2>&1; then
    command -v "python$1"
    return
  fi
  local candidate
  for candidate in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$1".*/bin/python"$1"; do
    [ -x "$candidate" ] && found=$candidate
  done
  if [ -n "${found:-}" ]; then
    echo "$found"
    return
  fi
  echo "Python $1 not found on PATH or under pyenv; install it (e.g. 'pyenv install $1')." >&2
  return 1
}

PY=$(find_python "$VERSION")
WORK=$(mktemp -d "${TMPDIR:-/tmp}/check-python-$VERSION-XXXXXX")
trap 'rm -rf "$WORK"' EXIT
start=$SECONDS

if [ -z "$WHEEL" ]; then
  "$UV" build --wheel --quiet -o "$WORK/dist" "$REPO"
  WHEEL=$(ls "$WORK"/dist/*.whl)
fi
WHEEL=$(realpath "$WHEEL")
echo "== Python $VERSION ($PY): $(basename "$WHEEL")"

"$UV" venv --quiet -p "$PY" "$WORK/venv"
VPY=$WORK/venv/bin/python
"$UV" pip install --quiet -p "$VPY" "$WHEEL"

# Runtime dependencies alone must be enough to import the provider, its operators, triggers,
# hooks and decorators, and for Airflow to see it through the provider entry point.
(cd "$WORK" && "$VPY" - "$VERSION" <<'EOF'
import importlib, sys
from importlib.metadata import entry_points

expected = sys.argv[1]
assert "%d.%d" % sys.version_info[:2] == expected, (sys.version, expected)
import batch_provider
assert "site-packages" in batch_provider.__file__, batch_provider.__file__
(ep,) = [e for e in entry_points(group="apache_airflow_provider") if e.value.startswith("batch_provider")]
info = ep.load()()
modules = {m for h in info["hooks"] for m in h["python-modules"]}
modules |= {m for o in info["operators"] for m in o["python-modules"]}
modules |= {m for t in info["triggers"] for m in t["python-modules"]}
modules |= {d["class-name"].rsplit(".", 1)[0] for d in info.get("task-decorators", [])}
for name in sorted(modules):
    importlib.import_module(name)
print(f"imported {len(modules)} provider modules on Python {sys.version.split()[0]}")
EOF
)

"$UV" pip install --quiet -p "$VPY" "$WHEEL[test]"

# The tests and DAGs without the package source: the tests' conftest puts their own root on
# sys.path, so a copy outside the checkout makes them import the installed wheel.
mkdir "$WORK/src"
cp -r "$REPO/tests" "$REPO/dags" "$REPO/pyproject.toml" "$WORK/src/"
find "$WORK/src" -name __pycache__ -prune -exec rm -rf {} +
TESTS=(
  tests/core
  tests/backends/test_encode.py
  tests/lifecycle/test_pricing.py
  tests/airflow/test_operators_unit.py
  tests/airflow/test_trigger_unit.py
  tests/packaging
  "tests/airflow/test_example_dags.py::test_nightly_ticket_enrichment_and_report"
  tests/airflow/test_decorator.py
)
(cd "$WORK/src" && BATCH_PROVIDER_WHEEL=$WHEEL "$VPY" -m pytest -q -p no:cacheprovider "${TESTS[@]}")
echo "== Python $VERSION passed in $((SECONDS - start)) s"
