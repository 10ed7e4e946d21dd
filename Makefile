# The two set-up commands of the README. Both create ./.venv on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo trigger test bench docs

$(BIN)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

demo: $(BIN)/.installed   ## run the example project (embedded Redis unless REDIS_URL is set)
	$(BIN)/python -m example_project.demo --serve

trigger: $(BIN)/.installed  ## in a second terminal while `make demo` runs: start every example
	$(BIN)/python -m example_project.trigger $(EXAMPLES)

test: $(BIN)/.installed   ## lint, types and the whole test suite (starts its own throwaway Redis)
	$(BIN)/ruff check celery_flow tests bench example_project
	$(BIN)/ruff format --check celery_flow tests bench example_project
	$(BIN)/mypy
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet --site-dir "$$(mktemp -d)"
	$(BIN)/python -m pytest

docs: $(BIN)/.installed   ## serve the docs site on http://127.0.0.1:8000/
	$(BIN)/mkdocs serve

bench: $(BIN)/.installed  ## benchmarks; results land in bench/results/
	$(BIN)/python -m bench.bench_core
	$(BIN)/python -m bench.bench_gate
	$(BIN)/python -m bench.bench_cron
	$(BIN)/python -m bench.bench_waits
	$(BIN)/python -m bench.bench_map
	$(BIN)/python -m bench.bench_memory

