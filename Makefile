# rnnreg — `make help` lists the targets. Every target sets up .venv itself.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# Real PTB: $RNNREG_DATA_DIR if set, else ../shared/data when it exists beside the clone.
ifeq ($(strip $(RNNREG_DATA_DIR)),)
ifneq ($(wildcard ../shared/data/ptb/ptb.train.txt),)
export RNNREG_DATA_DIR := $(abspath ../shared/data)
endif
endif

RUN_DIR ?= outputs/runs/make-run/$(shell date +%Y-%m-%d_%H-%M-%S)

.DEFAULT_GOAL := help
.PHONY: help setup test lint format run data bench report clean

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | \
		awk 'BEGIN {FS = ":.*## "}; {printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP) ## create .venv with the pinned dependencies (torch==2.13.0 CPU, hydra-core 1.3, ...)

lint: $(STAMP) ## ruff check
	$(VENV)/bin/ruff check rnnreg tests scripts

format: $(STAMP) ## ruff format + autofix
	$(VENV)/bin/ruff check --fix rnnreg tests scripts
	$(VENV)/bin/ruff format rnnreg tests scripts

test: $(STAMP) ## set up, then ruff and the whole test suite
	$(VENV)/bin/ruff check rnnreg tests scripts
	$(PY) -m pytest -q

run: $(STAMP) ## set up, then a short real run on PTB (Zaremba small, 2 epochs, a few minutes)
	$(PY) -m rnnreg.train experiment=zaremba_small trainer.epochs=2 hydra.run.dir=$(abspath $(RUN_DIR))
	@echo
	@echo "TensorBoard events: $(abspath $(RUN_DIR))/tb   (tensorboard --logdir outputs)"
	@echo "Per-epoch CSV:      $(abspath $(RUN_DIR))/metrics.csv"
	@echo "Run summary:        $(abspath $(RUN_DIR))/summary.json"

data: $(STAMP) ## fetch (when online) and check the PTB files, print their sizes
	$(PY) scripts/prepare_data.py

bench: $(STAMP) ## training tokens/s of every variant relative to the fused baseline
	$(PY) scripts/bench.py

report: $(STAMP) ## the perplexity table of every run under outputs/ (or OUTPUTS=dir)
	$(PY) -m rnnreg.report

clean: ## remove .venv and caches (keeps outputs/ and data/)
	rm -rf $(VENV) .pytest_cache .ruff_cache data/cache
