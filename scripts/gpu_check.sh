#!/usr/bin/env bash
# make gpu-check: rnnreg on a GPU as a product, in one command and at most 9 minutes.
#
#   1. the tests marked `gpu` (the device-agnostic tests' cuda half),
#   2. scripts/bench.py: the trainer's step at small, medium and large (tokens/s, ratio to
#      cuDNN `none`, max_memory_allocated), every variant at medium,
#   3. experiment=zaremba_large for the time that is left: epochs done, validation
#      perplexity, tokens/s and the projected wall time of its 55 epochs.
#
# Everything goes to one folder, $GPU_CHECK_OUT (default outputs/gpu-check): gpu-tests.log,
# bench.md, bench.log, zaremba_large.log, zaremba_large/ (the run), report.md.
# It fetches nothing: a machine without hydra-core/omegaconf installs them from
# $GPU_CHECK_WHEELS (default .gpu/wheels, made by `make gpu-pack`, which also copies the
# PTB files to .gpu/data). On a machine without a GPU it prints one line and exits 0.
# GPU_CHECK_DEVICE=cpu rehearses the whole script on a CPU (with a small GPU_CHECK_BUDGET_S).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && PY=.venv/bin/python
BUDGET_S=${GPU_CHECK_BUDGET_S:-540}
OUT=${GPU_CHECK_OUT:-outputs/gpu-check}
WHEELS=${GPU_CHECK_WHEELS:-.gpu/wheels}
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
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if ! "$PY" -c 'import hydra, omegaconf' 2>/dev/null; then
    if ! ls "$WHEELS"/*.whl >/dev/null 2>&1; then
        echo "gpu-check: hydra-core/omegaconf are missing and $WHEELS has no wheels; run make gpu-pack where pip works, and carry .gpu"
        exit 2
    fi
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/rnnreg-site "$WHEELS"/*.whl || exit 2
    export PYTHONPATH="$PYTHONPATH:/tmp/rnnreg-site"
fi
if [ -z "${RNNREG_DATA_DIR:-}" ]; then
    for candidate in .gpu/data ../shared/data data; do
        if [ -f "$candidate/ptb/ptb.train.txt" ]; then export RNNREG_DATA_DIR=$PWD/$candidate; break; fi
    done
fi
export CUBLAS_WORKSPACE_CONFIG=${CUBLAS_WORKSPACE_CONFIG:-:4096:8}
"$PY" - "$DEVICE" >"$OUT/machine.txt" <<'EOF'
import os, sys, torch
from rnnreg.runtime import cpu_model
if sys.argv[1] == "cuda":
    p = torch.cuda.get_device_properties(0)
    print(f"gpu: {p.name}, {p.total_memory / 2**30:.0f} GiB, {p.multi_processor_count} SMs; "
          f"torch {torch.__version__}, CUDA {torch.version.cuda}, "
          f"cuDNN {torch.backends.cudnn.version()}; host {cpu_model()}, {os.cpu_count()} CPUs")
else:
    print(f"rehearsal on the CPU: {cpu_model()}, torch {torch.__version__}")
EOF
cat "$OUT/machine.txt"

# 1. the gpu tests (at most a quarter of the budget)
echo "gpu-check: 1/3 the gpu tests"
timeout $(( $(left) / 4 )) "$PY" -m pytest -q -m gpu -p no:cacheprovider tests >"$OUT/gpu-tests.log" 2>&1
TESTS_RC=$?
TESTS_LINE=$(grep -E "passed|failed|error|skipped|deselected|no tests ran" "$OUT/gpu-tests.log" | tail -1)
[ $TESTS_RC -eq 124 ] && TESTS_LINE="stopped at its time limit; $TESTS_LINE"
echo "  $TESTS_LINE"

# 2. the bench (at most half of what is left)
echo "gpu-check: 2/3 the bench"
BENCH_S=$(( $(left) / 4 ))  # twice: medium in every mode and precision, then the sizes
BENCH=(--device "$DEVICE" --rounds 3 --steps 5 --warmup 3 --time-budget "$BENCH_S")
# --time-budget stops building configurations and rounds; the timeout is a backstop
timeout "$(cap $((BENCH_S + 180)))" "$PY" scripts/bench.py "${BENCH[@]}" --models medium \
    --compile-modes default reduce-overhead --precisions fp32 tf32 bf16 \
    --markdown "$OUT/bench-medium.md" >"$OUT/bench.log" 2>&1
BENCH_RC=$?
timeout "$(cap $((BENCH_S + 180)))" "$PY" scripts/bench.py "${BENCH[@]}" --models small large \
    --markdown "$OUT/bench-sizes.md" >>"$OUT/bench.log" 2>&1
BENCH_RC="$BENCH_RC $?"
cat "$OUT"/bench-medium.md "$OUT"/bench-sizes.md >"$OUT/bench.md" 2>/dev/null

# 3. zaremba_large for the rest (SIGTERM at the end: the run checkpoints and says so)
echo "gpu-check: 3/3 zaremba_large"
RUN_S=$(( $(left) - 20 ))
if [ -n "${RNNREG_DATA_DIR:-}" ] && [ "$RUN_S" -gt 60 ]; then
    timeout -s TERM "$RUN_S" "$PY" -m rnnreg.train experiment=zaremba_large seed=1 \
        trainer.device="$DEVICE" trainer.progress=log trainer.log_every_steps=100 \
        hydra.run.dir="$OUT/zaremba_large" >"$OUT/zaremba_large.log" 2>&1
    LARGE_RC=$?
else
    echo "zaremba_large not run: $([ -z "${RNNREG_DATA_DIR:-}" ] && echo 'no PTB files (RNNREG_DATA_DIR)' || echo "only ${RUN_S} s left")" >"$OUT/zaremba_large.log"
    LARGE_RC=1
fi

"$PY" - "$OUT" "$TESTS_LINE" "$BENCH_RC" "$LARGE_RC" "$(( $(date +%s) - START ))" <<'EOF' | tee "$OUT/report.md"
import csv, json, re, sys
from pathlib import Path
out, tests, bench_rc, large_rc, took = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
lines = ["# gpu-check", "", (out / "machine.txt").read_text().strip(), "",
         f"- gpu tests: {tests}", f"- wall time: {took} s", ""]
bench = out / "bench.md"
lines += ["## bench", "", bench.read_text() if bench.exists() else f"(no table; rc {bench_rc})", ""]
run = out / "zaremba_large"
summary = json.loads((run / "summary.json").read_text()) if (run / "summary.json").exists() else {}
rows = list(csv.DictReader(open(run / "metrics.csv"))) if (run / "metrics.csv").exists() else []
log = (out / "zaremba_large.log").read_text() if (out / "zaremba_large.log").exists() else ""
rates = [float(m) for m in re.findall(r"([0-9.]+) tok/s", log)]
rate = summary.get("tokens_per_s") or (rates[-1] if rates else None)
planned = summary.get("epochs_planned") or 55
tokens = summary.get("tokens_per_epoch") or 929_580
lines += ["## experiment=zaremba_large", ""]
if rate:
    lines.append(f"- epochs done: {len(rows)} of {planned}; steps {summary.get('steps')}; "
                 f"status {summary.get('status', 'not started')} (rc {large_rc})")
    lines += [f"- epoch {r['epoch']}: val ppl {float(r['val_ppl']):.2f}, "
              f"{float(r['tokens_per_s']):,.0f} tokens/s" for r in rows]
    lines.append(f"- training tokens/s: {rate:,.0f}; projected {planned} epochs: "
                 f"{planned * tokens / rate / 3600:.2f} h of training (validation excluded)")
else:
    lines.append(f"- not measured (rc {large_rc}): " + (log.strip().splitlines() or ["no log"])[-1])
print("\n".join(lines))
EOF
echo "gpu-check: everything is in $OUT"
