# detserve: the two set-up commands are `make demo` and `make test`. Both install what they need.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv lint format test test-unit test-integration stack demo schemas clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff format --check src tests scripts benchmarks
	$(BIN)/ruff check src tests scripts benchmarks
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format src tests scripts benchmarks
	$(BIN)/ruff check --fix src tests scripts benchmarks

# The runtime stack: Docker engine, local registry, base image and vLLM CPU image (idempotent).
stack: $(STAMP)
	$(BIN)/python scripts/stack/stack.py all

test-unit: $(STAMP)
	$(BIN)/pytest tests/unit

test-integration: stack
	$(BIN)/pytest tests/integration

test: stack
	$(BIN)/pytest tests

demo: stack
	bash scripts/demo.sh

schemas: $(STAMP)
	$(BIN)/detserve config schema > docs/profile.schema.json

clean:
	rm -rf $(VENV) build dist .pytest_cache .mypy_cache .ruff_cache
