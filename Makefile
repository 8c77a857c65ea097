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

# Where runs go: $RNNREG_OUTPUTS when set (RNNREG_OUTPUTS=$HOME/rnnreg-outputs keeps long
# runs when the checkout is replaced), else outputs/ in the checkout; every folder below.
OUTPUTS_ROOT := $(or $(RNNREG_OUTPUTS),outputs)
RUN_DIR ?= $(OUTPUTS_ROOT)/runs/make-run/$(shell date +%Y-%m-%d_%H-%M-%S)

# The canonical comparison. A fixed sweep directory: running `make sweep` again continues
# unfinished jobs from their checkpoints (trainer.auto_resume) and skips finished ones.
VARIANTS := none,zaremba,moon,gal,gal_untied,semeniuta,zoneout,weight_drop
SEEDS ?= 1,2,3
SWEEP_EPOCHS ?= 3
SWEEP_JOBS ?= 2
SWEEP_DIR ?= $(OUTPUTS_ROOT)/multiruns/sweep-small
PAPER_EXPERIMENTS := zaremba_medium,zaremba_large,gal_medium,gal_medium_untied,gal_large,gal_large_untied,moon_medium,zoneout_large,semeniuta_small,awd_ptb
PAPER_DIR ?= $(OUTPUTS_ROOT)/multiruns/sweep-paper
# The papers' rows reproduced on one machine, in order, one at a time (results/README.md).
LEDGER_ROWS := zaremba_medium "gal_medium_untied eval.mc_samples=100" \
	"gal_medium eval.mc_samples=100" moon_medium moon_embedding_medium
LEDGER_DIR ?= $(OUTPUTS_ROOT)/ledger
# The small-size comparison of LSTM and GRU cells and of the two-pass objectives (docs/protocols.md,
# "Objectives"): the small preset's 13 epochs, one run at a time, each resumed from its checkpoint.
# A row is a variant and its overrides, on experiment=zaremba_small unless it names its own
# (the GRU's, conf/experiment/zaremba_small_gru.yaml: its learning rate).
COMPARE_ROWS := zaremba "zaremba objective=fd" "zaremba objective=eld" gal "gal objective=fd" \
	"none experiment=zaremba_small_gru" "zaremba experiment=zaremba_small_gru" \
	"gal experiment=zaremba_small_gru" "semeniuta experiment=zaremba_small_gru" \
	"zoneout experiment=zaremba_small_gru variant.zoneout_cell=0"
COMPARE_SEEDS ?= 1,2,3
COMPARE_DIR ?= $(OUTPUTS_ROOT)/compare-small
COMPARE_THREADS ?= 2
COMPARE_ARGS ?=
# Its report is built from the ledger's copies of each finished row (results/runs/compare_*/:
# summary.json, metrics.csv, overrides), so that it outlives the machine that trained them.
COMPARE_REPORT = $(PY) -m rnnreg.report --outputs results/runs --runs 'compare_*' \
	--out results/compare-small --reference $(or $(REFERENCE),zaremba)
LEDGER_THREADS ?= 2

.DEFAULT_GOAL := help
.PHONY: help setup test test-fast lint format run data bench sweep sweep-paper ledger-runs compare-report report rescore results record clean gpu-pack gpu-check tune tune-paper postgres-server verify verify-gru compare-small

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | \
		awk 'BEGIN {FS = ":.*## "}; {printf "  make %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	mkdir -p outputs
	touch $(STAMP)

setup: $(STAMP) ## create .venv with the pinned dependencies (torch==2.13.0 CPU, hydra-core 1.3, ...)

lint: $(STAMP) ## ruff check
	$(VENV)/bin/ruff check rnnreg tests scripts examples

format: $(STAMP) ## ruff format + autofix
	$(VENV)/bin/ruff check --fix rnnreg tests scripts examples
	$(VENV)/bin/ruff format rnnreg tests scripts examples

# The numerical tests again with two threads: other kernels' blocking rounds differently,
# so an exact comparison that only holds on one machine's kernels fails here, not for a user.
NUMERIC_TESTS := tests/test_lstm.py tests/test_recurrence.py tests/test_model.py \
	tests/test_mc.py tests/test_gru.py tests/test_step.py tests/test_variants.py tests/test_masks.py

test: $(STAMP) postgres-server ## set up, then ruff, the whole suite (1 thread) and the numerical tests with 2
	$(VENV)/bin/ruff check rnnreg tests scripts examples
	RNNREG_TEST_THREADS=1 $(PY) -m pytest -q
	RNNREG_TEST_THREADS=2 $(PY) -m pytest -q $(NUMERIC_TESTS)

postgres-server: ## make sure a PostgreSQL server is installed (the tuning test starts its own): Debian's postgresql
	@command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || \
		{ echo "installing Debian's postgresql for tests/test_tune.py"; \
		  (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql) >/dev/null; }

test-fast: $(STAMP) ## the suite without the subprocess (kill, CLI, sweep) tests, for the edit-run loop
	$(VENV)/bin/ruff check rnnreg tests scripts examples
	$(PY) -m pytest -q -m "not slow"

# `make verify` checks every variant (built-in and installed plug-ins); VARIANT=<name> one.
VARIANT ?=
VERIFY_ARGS ?=

verify: $(STAMP) ## rnnreg verify for VARIANT (default: every variant, plug-ins included), VERIFY_ARGS more overrides (e.g. --no-resume)
	@variants="$(VARIANT)"; [ -n "$$variants" ] || variants=$$($(PY) -c "from rnnreg.config.schema import group_options; print(' '.join(group_options('variant')))"); \
	rc=0; for v in $$variants; do $(PY) -m rnnreg.verify variant=$$v $(VERIFY_ARGS) || rc=1; echo; done; exit $$rc

GRU_VARIANTS := none zaremba gal gal_untied semeniuta weight_drop awd

verify-gru: $(STAMP) ## rnnreg verify on GRU layers (model.cell=gru) of every variant that has a meaning there; zoneout on h only
	@rc=0; for v in $(GRU_VARIANTS); do $(PY) -m rnnreg.verify variant=$$v model.cell=gru $(VERIFY_ARGS) || rc=1; echo; done; \
	$(PY) -m rnnreg.verify variant=zoneout variant.zoneout_cell=0 model.cell=gru $(VERIFY_ARGS) || rc=1; exit $$rc

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

sweep: $(STAMP) ## every variant x 3 seeds, model=small PTB, SWEEP_EPOCHS (3) epochs, 2 jobs at once
	$(PY) -m rnnreg.train -m hydra/launcher=joblib hydra.launcher.n_jobs=$(SWEEP_JOBS) \
		variant=$(VARIANTS) seed=$(SEEDS) model=small trainer.epochs=$(SWEEP_EPOCHS) \
		trainer.auto_resume=true hydra.sweep.dir=$(abspath $(SWEEP_DIR))

TUNE_WORKERS ?= 2
TUNE ?= default
TUNE_THREADS ?= 0

sweep-paper: $(STAMP) ## the paper presets x 3 seeds on SLURM GPUs (set RNNREG_SLURM_PARTITION)
	$(PY) -m rnnreg.train -m hydra/launcher=slurm experiment=$(PAPER_EXPERIMENTS) \
		seed=$(SEEDS) eval.mc_samples=100 trainer.device=cuda trainer.auto_resume=true \
		hydra.sweep.dir=$(abspath $(PAPER_DIR))

tune: $(STAMP) ## equal-budget studies (conf/tune/$(TUNE).yaml; default: zaremba, gal; small; 16 trials x 2 epochs, ASHA; best retrained x 3 seeds; TUNE=cpu_demo: ~4 CPU-hours), TUNE_WORKERS (2) at once, TUNE_THREADS each (0: cores / workers)
	$(PY) -m rnnreg.tune tune=$(TUNE) tune.workers=$(TUNE_WORKERS) tune.threads=$(TUNE_THREADS)

# The same comparison at medium size on SLURM GPUs: 16 trials of 6 epochs per variant with
# ASHA (min 2 epochs), the best of each retrained with 3 seeds at the medium protocol's 39
# epochs (our choice of budget), TUNE_WORKERS_SLURM array tasks on TUNE_STORAGE.
TUNE_WORKERS_SLURM ?= 8
TUNE_STORAGE ?=
TUNE_LAUNCHER ?= slurm
TUNE_ARGS ?=
tune-paper: $(STAMP) ## the tuned comparison at medium size as a SLURM worker array (set TUNE_STORAGE=postgresql://..., RNNREG_SLURM_PARTITION); TUNE_ARGS=tune.dry_run=true checks and prints the plan, TUNE_LAUNCHER=debug runs the array's tasks here
	$(PY) -m rnnreg.tune tune.name=paper-medium 'tune.variants=[none,zaremba,gal,moon,semeniuta,zoneout]' \
		tune.trials=16 tune.budget=6 tune.min_resource=2 tune.retrain_seeds=3 tune.retrain_epochs=39 \
		tune.workers=$(TUNE_WORKERS_SLURM) tune.launcher=$(TUNE_LAUNCHER) \
		$(if $(TUNE_STORAGE),tune.storage=$(TUNE_STORAGE)) model=medium trainer.device=cuda $(TUNE_ARGS)

ledger-runs: $(STAMP) ## the ledger's rows in order (seed 1) in LEDGER_DIR ($$RNNREG_OUTPUTS/ledger when set): each skipped when results/runs has it completed, else resumed from its checkpoint; recorded however it ends
	@for row in $(LEDGER_ROWS); do \
		set -- $$row; name=$$1_s1; dir=$(abspath $(LEDGER_DIR))/$$name; \
		if grep -qs '"status": "completed"' results/runs/$$name.json; then \
			echo "$$name: completed in results/runs, skipped"; continue; fi; \
		$(PY) -m rnnreg.ledger where $$name $$dir; \
		rc=0; $(PY) -m rnnreg.train experiment=$$1 "$${@:2}" seed=1 trainer.threads=$(LEDGER_THREADS) \
			trainer.progress=log trainer.auto_resume=true hydra.run.dir=$$dir || rc=$$?; \
		if [ -f $$dir/summary.json ]; then \
			$(PY) -m rnnreg.ledger record $$dir --name $$name --stopped "exit $$rc"; fi; \
		if [ $$rc -ne 0 ]; then echo "$$name: stopped (exit $$rc); run make ledger-runs again to resume it"; exit $$rc; fi; \
	done

compare-small: $(STAMP) ## LSTM vs GRU, plain vs fd/eld on the small preset (13 epochs) x COMPARE_SEEDS, one run at a time in COMPARE_DIR (resumed; rows completed in results/runs skipped), each recorded in the ledger as compare_<row>; COMPARE_ARGS more overrides; then make compare-report
	@for seed in $$(echo $(COMPARE_SEEDS) | tr , ' '); do for row in $(COMPARE_ROWS); do \
		set -- $$row; name=$$(echo "$$*" | tr ' =.' '__-')_s$$seed; dir=$(abspath $(COMPARE_DIR))/$$name; \
		if grep -qs '"status": "completed"' results/runs/compare_$$name.json; then \
			echo "$$name: completed in results/runs, skipped"; continue; fi; \
		$(PY) -m rnnreg.ledger where compare_$$name $$dir --target compare-small; \
		experiment=experiment=zaremba_small; case " $$* " in *" experiment="*) experiment=;; esac; \
		rc=0; $(PY) -m rnnreg.train $$experiment variant=$$1 "$${@:2}" seed=$$seed \
			trainer.threads=$(COMPARE_THREADS) trainer.auto_resume=true trainer.progress=log \
			$(COMPARE_ARGS) hydra.run.dir=$$dir || rc=$$?; \
		if [ -f $$dir/summary.json ]; then \
			$(PY) -m rnnreg.ledger record $$dir --name compare_$$name --stopped "exit $$rc"; fi; \
		if [ $$rc -ne 0 ]; then echo "$$name: stopped (exit $$rc); run make compare-small again to resume it"; exit $$rc; fi; \
	done; done
	$(COMPARE_REPORT)

compare-report: $(STAMP) ## the comparison's report (CIs, tests vs REFERENCE, default zaremba; equal-time view) from the ledger's tracked copies results/runs/compare_*, into results/compare-small
	$(COMPARE_REPORT)

report: $(STAMP) ## the perplexity table of every run under outputs/ (or OUTPUTS=dir), with CIs and tests vs REFERENCE (none)
	$(PY) -m rnnreg.report --reference $(or $(REFERENCE),none)

rescore: $(STAMP) ## cache pointer + dynamic evaluation of a finished run, settings chosen on validation: make rescore RUN=<dir>
	@test -n "$(RUN)" || { echo "make rescore needs RUN=<run directory>"; exit 2; }
	$(PY) -m rnnreg.cli.rescore $(abspath $(RUN)) --grid $(ARGS)

results: $(STAMP) ## regenerate results/README.md (the ledger table) from results/runs/*.json
	$(PY) -m rnnreg.ledger table

record: $(STAMP) ## add or refresh a run in the ledger: make record RUN=<run dir> [NAME=...]
	@test -n "$(RUN)" || { echo "make record needs RUN=<run directory>"; exit 2; }
	$(PY) -m rnnreg.ledger record $(abspath $(RUN)) $(if $(NAME),--name $(NAME))

clean: ## remove .venv and caches (keeps outputs/ and data/)
	rm -rf $(VENV) .pytest_cache .ruff_cache data/cache

gpu-pack: ## put what gpu-check needs on a machine that fetches nothing in .gpu/ (wheels, PTB)
	bash scripts/gpu_pack.sh

gpu-check: ## on a GPU: the gpu tests, the bench at 3 sizes, zaremba_large; <= 9 min (one line without a GPU)
	bash scripts/gpu_check.sh
