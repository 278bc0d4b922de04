# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-pythons lint typecheck pytest bench bench-instructions stress soak mutate install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/asyncflow demo

lint: $(STAMP)
	$(BIN)/ruff check asyncflow tests benchmarks examples docs
	$(BIN)/ruff format --check asyncflow tests benchmarks examples docs
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/python -m pytest -q

test: lint typecheck pytest

# The test suite again on every other Python 3.11+ found (on PATH or in pyenv), each in .venv-3.X,
# and once more on uvloop's event loop.
test-pythons: $(STAMP)
	bash .ci/test-pythons

bench: $(STAMP)
	$(BIN)/python benchmarks/overhead.py
	$(BIN)/python benchmarks/middleware.py
	$(BIN)/python benchmarks/durable.py
	$(BIN)/python benchmarks/durable.py --one-cpu
	$(BIN)/python benchmarks/durable.py --loop uvloop
	$(BIN)/python benchmarks/isolation.py

# Middleware costs in instructions (valgrind's callgrind): the same on every run, about 3 minutes.
bench-instructions: $(STAMP)
	$(BIN)/python benchmarks/instructions.py

# make stress KILLS=60 FAULT_SEEDS=50 for a shorter campaign: kills, then the fault suite
# (tests/faults: 200 runs per seed and backend, with writes that fail) on FAULT_SEEDS seeds. In parts:
# ASYNCFLOW_FAULT_SEED_FROM=100 ASYNCFLOW_FAULT_SEEDS=100 pytest tests/faults -k postgres (seeds 100-199).
KILLS ?= 500
FAULT_SEEDS ?= 500
stress: $(STAMP)
	$(BIN)/python benchmarks/stress.py --kills $(KILLS)
	ASYNCFLOW_CHAOS=large $(BIN)/python -m pytest -q -p no:cacheprovider tests/test_postgres_chaos.py
	ASYNCFLOW_FAULT_SEEDS=$(FAULT_SEEDS) $(BIN)/python -m pytest -q -p no:cacheprovider tests/faults

# 30 minutes of mixed durable load, the worker killed every minute: RSS, fds, file size and p99
# checkpoint latency to benchmarks/soak.csv and soak.png, flat within 10% over the last 20 minutes.
# make soak MINUTES=5 for a short one.
MINUTES ?= 30
soak: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[soak]'
	$(BIN)/python benchmarks/soak.py --minutes $(MINUTES)

# Mutation testing of asyncflow/_core and asyncflow/backends against the suite (its 'once' tests
# left out), with mutmut ([tool.mutmut] in pyproject.toml): each mutant runs only the tests that
# reach its function. Days for the whole scope on two cores (docs/mutation.md); not in make test.
# make mutate MUTANTS='asyncflow._core.plan*' for the mutants of one module; CHILDREN=4 on a
# machine of your own. Results are kept in mutants/: without MUTANTS, a mutant tried before is
# not run again (named ones are).
MUTANTS ?=
CHILDREN ?= 1
mutate: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[mutate]'
	nice -n 10 $(BIN)/mutmut run --max-children $(CHILDREN) $(MUTANTS)
	$(BIN)/mutmut results

clean:
	rm -rf $(VENV) .venv-3.* .mypy_cache .pytest_cache .ruff_cache mutants
