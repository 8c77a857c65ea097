#!/usr/bin/env bash
# make gpu-check: rnnreg on a GPU as a product, in one command and at most 9 minutes.
#
#   0. dependencies: the distributions of scripts/gpu_pack.txt this Python lacks, installed
#      from $GPU_CHECK_WHEELS (default .gpu/wheels, made by `make gpu-pack`);
#   1. machine: the GPU, CUDA and host (rnnreg/records/provenance.py machine_description);
#   2. tests: the tests marked `gpu` (the device-agnostic tests' cuda half);
#   3. bench: scripts/bench.py, the trainer's step at small, medium and large (tokens/s,
#      ratio to cuDNN `none`, max_memory_allocated, CUDA kernels per step), first none,
#      zaremba, gal and zoneout at medium, then every variant at medium;
#   4. large: experiment=zaremba_large for the time that is left: epochs done, validation
#      perplexity, tokens/s and the projected wall time of its 55 epochs.
#
# Every step runs even when one before it failed, records its status in steps.tsv, and
# report.md lists them all; missing wheels or a failed install end the check early with
# exit 2, the report saying what is missing. Everything goes to one folder,
# $GPU_CHECK_OUT (default outputs/gpu-check): steps.tsv, machine.txt, gpu-tests.log,
# bench.md, bench.log, zaremba_large.log, zaremba_large/ (the run), report.md.
# It fetches nothing. On a machine without a GPU it prints one line and exits 0;
# GPU_CHECK_DEVICE=cpu rehearses the whole script on a CPU (with a small
# GPU_CHECK_BUDGET_S); GPU_CHECK_STEPS="machine tests" runs only the steps named.
# Exit status: 0 when every step that ran is ok, 1 when one failed, 2 without dependencies.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && PY=.venv/bin/python
BUDGET_S=${GPU_CHECK_BUDGET_S:-540}
OUT=${GPU_CHECK_OUT:-outputs/gpu-check}
WHEELS=${GPU_CHECK_WHEELS:-.gpu/wheels}
STEPS=" ${GPU_CHECK_STEPS:-machine tests bench large} "
START=$(date +%s)
left() { echo $((BUDGET_S - ($(date +%s) - START))); }
# a step's time limit: what it wants, never past the whole budget (30 s kept for the report)
cap() { local rest=$(( $(left) - 30 )); [ "$rest" -lt 1 ] && rest=1; echo $(( $1 < rest ? $1 : rest )); }

DEVICE=${GPU_CHECK_DEVICE:-cuda}
if [ "$DEVICE" = cuda ] && ! "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    echo "gpu-check: no CUDA device visible to $PY (no torch there, or torch.cuda.is_available() is False); nothing to check here"
    exit 0
fi
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
rm -f "$OUT/steps.tsv" "$OUT/machine.txt" "$OUT/report.md"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

# record STEP STATUS NOTE: one line of steps.tsv
record() { printf '%s\t%s\t%s\n' "$1" "$2" "${3:-}" >>"$OUT/steps.tsv"; echo "  $1: $2${3:+ ($3)}"; }
# status RC: ok, or failed with the exit code (124: the step's time limit)
status() { case "$1" in 0) echo ok ;; 124) echo "stopped at its time limit" ;; *) echo "failed (rc $1)" ;; esac; }
wanted() { [[ "$STEPS" == *" $1 "* ]]; }
report() { "$PY" scripts/gpu_report.py "$OUT" "$(( $(date +%s) - START ))" | tee "$OUT/report.md"; }
finish() {  # finish RC [REASON]: the steps left unrun, the report, exit RC
    for step in machine tests bench large; do
        grep -q "^$step	" "$OUT/steps.tsv" 2>/dev/null || record "$step" "not run" "${2:-}"
    done
    report
    echo "gpu-check: everything is in $OUT"
    exit "$1"
}

# 0. dependencies
echo "gpu-check: 0/4 dependencies"
MISSING=$("$PY" scripts/gpu_report.py --missing 2>&1) || MISSING="(python failed: $MISSING)"
if [ -n "$MISSING" ]; then
    FOUND=() ABSENT=()
    for dist in $MISSING; do
        name=$(echo "${dist%%==*}" | tr 'A-Z.-' 'a-z__')
        wheel=$(ls "$WHEELS" 2>/dev/null | awk -v n="$name" 'tolower($0) ~ "^"n"-" {print; exit}')
        if [ -n "$wheel" ]; then FOUND+=("$WHEELS/$wheel"); else ABSENT+=("$dist"); fi
    done
    if [ ${#ABSENT[@]} -gt 0 ]; then
        record dependencies "missing" "no wheel in $WHEELS for ${ABSENT[*]}: run make gpu-pack where pip works, and carry .gpu"
        finish 2 "dependencies missing"
    fi
    RC=0
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/rnnreg-site "${FOUND[@]}" >"$OUT/pip.log" 2>&1 || RC=$?
    if [ $RC -ne 0 ]; then
        record dependencies "failed (rc $RC)" "pip could not install ${MISSING}: $(tail -1 "$OUT/pip.log")"
        finish 2 "dependencies not installed"
    fi
    export PYTHONPATH="$PYTHONPATH:/tmp/rnnreg-site"
    record dependencies ok "installed from $WHEELS: $MISSING"
else
    record dependencies ok "all present"
fi
if [ -z "${RNNREG_DATA_DIR:-}" ]; then
    for candidate in .gpu/data ../shared/data data; do
        if [ -f "$candidate/ptb/ptb.train.txt" ]; then export RNNREG_DATA_DIR=$PWD/$candidate; break; fi
    done
fi
export CUBLAS_WORKSPACE_CONFIG=${CUBLAS_WORKSPACE_CONFIG:-:4096:8}

# 1. the machine
echo "gpu-check: 1/4 the machine"
if wanted machine; then
    RC=0
    "$PY" -m rnnreg.records.provenance "$DEVICE" >"$OUT/machine.txt" 2>"$OUT/machine.err" || RC=$?
    record machine "$(status $RC)" "$(head -c 300 "$OUT/machine.txt" | head -1)$( [ $RC -ne 0 ] && tail -1 "$OUT/machine.err")"
else
    record machine "skipped" "GPU_CHECK_STEPS"
fi

# 2. the gpu tests (at most a quarter of the budget)
echo "gpu-check: 2/4 the gpu tests"
if wanted tests; then
    RC=0
    timeout $(( $(left) / 4 )) "$PY" -m pytest -q -m gpu -p no:cacheprovider tests \
        >"$OUT/gpu-tests.log" 2>&1 || RC=$?
    LINE=$(grep -E "passed|failed|error|skipped|deselected|no tests ran" "$OUT/gpu-tests.log" | tail -1)
    [ $RC -eq 5 ] && RC=0  # pytest: no test collected (every gpu test deselected or skipped)
    record tests "$(status $RC)" "$LINE"
else
    record tests "skipped" "GPU_CHECK_STEPS"
fi

# 3. the bench (at most half of what is left)
echo "gpu-check: 3/4 the bench"
if wanted bench; then
    # three times: the kernel launches per step of none, zaremba, gal and zoneout at medium
    # (docs/performance.md, "Operators per step"), medium in every mode and precision, the sizes
    BENCH_S=$(( $(left) / 6 ))
    BENCH=(--device "$DEVICE" --rounds 3 --steps 5 --warmup 3 --time-budget "$BENCH_S")
    # --time-budget stops building configurations and rounds; the timeout is a backstop
    RC=0
    timeout "$(cap $((BENCH_S + 180)))" "$PY" scripts/bench.py "${BENCH[@]}" --models medium \
        --variants none zaremba gal zoneout \
        --markdown "$OUT/bench-launches.md" >"$OUT/bench.log" 2>&1 || RC=$?
    record bench-launches "$(status $RC)" "$(tail -1 "$OUT/bench.log")"
    RC=0
    timeout "$(cap $((BENCH_S + 180)))" "$PY" scripts/bench.py "${BENCH[@]}" --models medium \
        --compile-modes default reduce-overhead --precisions fp32 tf32 bf16 \
        --markdown "$OUT/bench-medium.md" >>"$OUT/bench.log" 2>&1 || RC=$?
    record bench-medium "$(status $RC)" "$(tail -1 "$OUT/bench.log")"
    RC=0
    timeout "$(cap $((BENCH_S + 180)))" "$PY" scripts/bench.py "${BENCH[@]}" --models small large \
        --markdown "$OUT/bench-sizes.md" >>"$OUT/bench.log" 2>&1 || RC=$?
    record bench "$(status $RC)" "sizes: $(tail -1 "$OUT/bench.log")"
    cat "$OUT"/bench-launches.md "$OUT"/bench-medium.md "$OUT"/bench-sizes.md >"$OUT/bench.md" \
        2>/dev/null
else
    record bench "skipped" "GPU_CHECK_STEPS"
fi

# 4. zaremba_large for the rest (SIGTERM at the end: the run checkpoints and says so)
echo "gpu-check: 4/4 zaremba_large"
RUN_S=$(( $(left) - 20 ))
if ! wanted large; then
    record large "skipped" "GPU_CHECK_STEPS"
elif [ -z "${RNNREG_DATA_DIR:-}" ]; then
    record large "not run" "no PTB files (RNNREG_DATA_DIR)"
elif [ "$RUN_S" -le 60 ]; then
    record large "not run" "only ${RUN_S} s left"
else
    RC=0
    timeout -s TERM "$RUN_S" "$PY" -m rnnreg.train experiment=zaremba_large seed=1 \
        trainer.device="$DEVICE" trainer.progress=log trainer.log_every_steps=100 \
        hydra.run.dir="$OUT/zaremba_large" >"$OUT/zaremba_large.log" 2>&1 || RC=$?
    # the budget's SIGTERM ends it as planned: the run checkpoints and exits
    if [ $RC -eq 124 ]; then record large ok "stopped at the budget (${RUN_S} s), checkpointed"
    else record large "$(status $RC)" "$(tail -1 "$OUT/zaremba_large.log")"; fi
fi

FAILED=0
cut -f2 "$OUT/steps.tsv" | grep -q '^failed' && FAILED=1
finish $FAILED
