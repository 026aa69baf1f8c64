# make run | test | lint | dryrun: each sets up .venv (python3 -m venv) on first use and
# reinstalls the package only when pyproject.toml changes. Rules run in this venv (no --sdm).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CORES ?= 2
CONFIG ?= config/config.yaml
# Rules call the `d3po` command of this venv.
export PATH := $(CURDIR)/$(BIN):$(PATH)
SNAKEMAKE := $(BIN)/snakemake --cores $(CORES) --configfile $(CONFIG) --replace-workflow-config

.PHONY: run test lint dryrun report

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(SNAKEMAKE)

dryrun: $(STAMP)
	$(SNAKEMAKE) --dry-run

report: $(STAMP)
	$(SNAKEMAKE) --report results/report.html

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/snakefmt --check .
	$(BIN)/snakemake --lint --configfile $(CONFIG)
