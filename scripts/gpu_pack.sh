#!/usr/bin/env bash
# make gpu-pack: what `make gpu-check` needs on a GPU machine that can fetch nothing, in
# .gpu/ (ignored by git): a wheel of every distribution of scripts/gpu_pack.txt (what rnnreg
# imports beside torch, with their dependencies), for the GPU image's Python
# ($GPU_PYTHON, default 3.12: the workplace's CUDA image), and the PTB files. antlr4, which
# PyPI has only as a source archive, is built here. gpu_check.sh installs only the ones
# the machine lacks.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
GPU_PYTHON=${GPU_PYTHON:-3.12}
mkdir -p .gpu/wheels .gpu/data/ptb
BINARY=(--only-binary=:all: --python-version "$GPU_PYTHON" --implementation cp
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
grep -v '^#' scripts/gpu_pack.txt | while read -r dist module _; do
    [ -n "$dist" ] || continue
    if [ "$module" = antlr4 ]; then
        "$PY" -m pip wheel -q --no-deps -w .gpu/wheels "$dist"
    else
        "$PY" -m pip download -q --no-deps "${BINARY[@]}" -d .gpu/wheels "$dist"
    fi
done
DATA=${RNNREG_DATA_DIR:-../shared/data}
cp "$DATA"/ptb/ptb.{train,valid,test}.txt .gpu/data/ptb/
ls .gpu/wheels
du -sh .gpu
echo "carry .gpu with the working tree, then: bash scripts/gpu_check.sh"
