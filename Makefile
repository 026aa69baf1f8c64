# make run | test | lint | dryrun: each sets up .venv (python3 -m venv) on first use and
# reinstalls the package only when pyproject.toml changes. Rules run in this venv (no --sdm).
# make test-cluster: starts a real single-node Slurm (root and apt; sudo when not root) and runs
# the workflow on it through profiles/slurm (tests/cluster), then stops it.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CORES ?= 2
CONFIG ?= config/config.yaml
# Rules call the `d3po` command of this venv.
export PATH := $(CURDIR)/$(BIN):$(PATH)
SNAKEMAKE := $(BIN)/snakemake --cores $(CORES) --configfile $(CONFIG) --replace-workflow-config

SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)

.PHONY: run test test-cluster lint dryrun report

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -e '.[dev,workflow]'
	touch $(STAMP)

# `make run` records its config, so that a later `make report` (without CONFIG=) reports on it.
LAST_CONFIG := results/.make-run-config
REPORT_CONFIG = $(if $(filter command line,$(origin CONFIG)),$(CONFIG),$(or $(shell cat $(LAST_CONFIG) 2>/dev/null),$(CONFIG)))

# A missing or unparsable config stops here, in one line (Snakemake's own errors name neither
# the file nor the line), before it is recorded for `make report`.
CHECK_CONFIG = $(BIN)/d3po check-config

run: $(STAMP)
	$(CHECK_CONFIG) $(CONFIG)
	mkdir -p results && echo '$(CONFIG)' > $(LAST_CONFIG)
	$(SNAKEMAKE)

dryrun: $(STAMP)
	$(CHECK_CONFIG) $(CONFIG)
	$(SNAKEMAKE) --dry-run

report: $(STAMP)
	$(CHECK_CONFIG) $(REPORT_CONFIG)
	$(BIN)/snakemake --cores $(CORES) --configfile $(REPORT_CONFIG) --replace-workflow-config \
		--report results/report.html

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-cluster: $(STAMP)
	$(SUDO) tests/cluster/start_slurm.sh
	$(BIN)/python -m pytest -q -s -m cluster tests/cluster; status=$$?; \
		$(SUDO) tests/cluster/stop_slurm.sh; exit $$status

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/snakefmt --check .
	$(BIN)/snakemake --lint --configfile $(CONFIG)
