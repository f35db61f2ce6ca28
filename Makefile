# Two entry points for a fresh machine: `make demo` and `make test`. Both install first.
PYTHON ?= python3.11
VENV   ?= .venv
UV      = $(VENV)/bin/uv

.PHONY: install demo test lint emulator

$(VENV)/.installed: pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --disable-pip-version-check uv
	$(UV) pip install -q -p $(VENV)/bin/python -e ".[test]"
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

## Start the emulator in the foreground on 127.0.0.1:8787.
emulator: install
	$(VENV)/bin/batch-provider emulator --host 127.0.0.1 --port 8787 --time-factor 600
