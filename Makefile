# The README's commands. Every target works on a fresh machine with Python 3.11.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
OUT ?= demo_out
ARGS ?=

.PHONY: demo test bench docs install dev clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: setup.cfg pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e .
	touch $@

$(VENV)/.installed-dev: setup.cfg pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@ $(VENV)/.installed

$(VENV)/.installed-docs: setup.cfg pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[docs]'
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed
dev: $(VENV)/.installed-dev

## make demo: install, train (or load cached) seed nets on the bundled digits, invert every class
demo: install
	$(BIN)/captum-invert demo --out $(OUT) $(ARGS)

## make test: install with the dev extras and run the test suite
test: dev
	$(BIN)/python -m pytest -q $(ARGS)

## make bench: throughput of BackwardPassInversion against the alternatives
bench: dev
	$(BIN)/python benchmarks/backward_pass.py $(ARGS)

## make docs: build the Sphinx documentation, warnings as errors
docs: $(VENV)/.installed-docs
	$(BIN)/python -m sphinx -W --keep-going -b html -q docs docs/_build/html
	@echo "docs/_build/html/index.html"

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache *.egg-info
