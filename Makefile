# Two entry points for a fresh machine: `make demo` and `make test`. Both install first.
PYTHON ?= python3.11
VENV   ?= .venv
UV      = $(VENV)/bin/uv

.PHONY: install demo test lint emulator check-pythons

$(VENV)/.installed: pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --disable-pip-version-check uv
	$(UV) pip install -q --compile-bytecode -p $(VENV)/bin/python -e ".[test]"
	touch $@

install: $(VENV)/.installed

## Run the example DAG end to end on SQLite against the embedded emulator.
demo: install
	$(VENV)/bin/python scripts/demo.py

## Run the test suite (and the linter).
test: install
	scripts/system-deps.sh
	$(VENV)/bin/ruff check batch_provider dags tests bench scripts
	$(VENV)/bin/python -m pytest -q -p no:cacheprovider

## On each other supported Python: a clean venv installs the built wheel, imports the provider,
## runs the unit tests and example DAGs against the emulator (scripts/check-python.sh).
OTHER_PYTHONS ?= 3.12 3.13
check-pythons: install
	rm -rf dist
	$(UV) build --wheel --quiet -o dist
	for v in $(OTHER_PYTHONS); do UV=$(UV) scripts/check-python.sh $$v dist/*.whl || exit 1; done
	@# No 3.14 interpreter here yet: check that every dependency (all extras) has CPython 3.14 wheels.
	$(UV) pip compile pyproject.toml --all-extras --python-version 3.14 --python-platform x86_64-manylinux_2_28 --only-binary :all: -q -o /dev/null
	@echo "Python 3.14: every dependency resolves to wheels"

## Start the emulator in the foreground on 127.0.0.1:8787.
emulator: install
	$(VENV)/bin/batch-provider emulator --host 127.0.0.1 --port 8787 --time-factor 600
