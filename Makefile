# The two set-up commands of the README. Both create ./.venv on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test bench lint

$(BIN)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

demo: $(BIN)/.installed   ## run the example project (embedded Redis unless REDIS_URL is set)
	$(BIN)/python -m example_project.demo

test: $(BIN)/.installed   ## the whole test suite (starts a throwaway Redis of its own)
	$(BIN)/python -m pytest

bench: $(BIN)/.installed  ## benchmarks; results land in bench/results/
	$(BIN)/python -m bench.bench_core

lint: $(BIN)/.installed
	$(BIN)/ruff check celery_flow tests bench example_project
	$(BIN)/mypy
