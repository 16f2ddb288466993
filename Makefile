# Targets for a fresh machine with Python 3.11 and Debian's tools. `make help` lists them.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
ARGS ?=
PYTEST_ARGS ?=

.PHONY: help install run test test-fast lint bench clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

install: $(STAMP) ## create .venv and install the project with its test tools

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: install ## run the whole method on the embedded tuxpaint data set (extra overrides: ARGS=...)
	$(BIN)/python -m vldd_lightning $(ARGS)

test: install ## run the test suite (extra pytest options: PYTEST_ARGS=...)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: install ## run the tests not marked slow
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

lint: install ## ruff and mypy
	$(BIN)/python -m ruff check src tests
	$(BIN)/python -m mypy

bench: install ## distillation cost and memory, coreset selection time (writes bench_out/)
	$(BIN)/python -m vldd_lightning.bench $(ARGS)

clean: ## remove run folders and artifacts (keeps .venv and data/)
	rm -rf outputs multirun artifacts bench_out
