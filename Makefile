# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-pythons lint typecheck pytest bench bench-instructions stress install clean

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
	$(BIN)/ruff check asyncflow tests benchmarks examples
	$(BIN)/ruff format --check asyncflow tests benchmarks examples
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

# make stress KILLS=60 for a shorter campaign
KILLS ?= 500
stress: $(STAMP)
	$(BIN)/python benchmarks/stress.py --kills $(KILLS)

clean:
	rm -rf $(VENV) .venv-3.* .mypy_cache .pytest_cache .ruff_cache
