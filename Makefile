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

# `make run` records its config, so that a later `make report` (without CONFIG=) reports on it.
LAST_CONFIG := results/.make-run-config
REPORT_CONFIG = $(if $(filter command line,$(origin CONFIG)),$(CONFIG),$(or $(shell cat $(LAST_CONFIG) 2>/dev/null),$(CONFIG)))

run: $(STAMP)
	mkdir -p results && echo '$(CONFIG)' > $(LAST_CONFIG)
	$(SNAKEMAKE)

dryrun: $(STAMP)
	$(SNAKEMAKE) --dry-run

report: $(STAMP)
	$(BIN)/snakemake --cores $(CORES) --configfile $(REPORT_CONFIG) --replace-workflow-config \
		--report results/report.html

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/snakefmt --check .
	$(BIN)/snakemake --lint --configfile $(CONFIG)
