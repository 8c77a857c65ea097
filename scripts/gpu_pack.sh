#!/usr/bin/env bash
# make gpu-pack: what `make gpu-check` needs on a GPU machine that can fetch nothing, in
# .gpu/ (ignored by git): the pure-Python wheels its image lacks (hydra-core, omegaconf and
# antlr4, which PyPI has only as a source archive, built here) and the PTB files.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
mkdir -p .gpu/wheels .gpu/data/ptb
"$PY" -m pip download -q --no-deps -d .gpu/wheels hydra-core==1.3.2 omegaconf==2.3.0
"$PY" -m pip wheel -q --no-deps -w .gpu/wheels antlr4-python3-runtime==4.9.3
DATA=${RNNREG_DATA_DIR:-../shared/data}
cp "$DATA"/ptb/ptb.{train,valid,test}.txt .gpu/data/ptb/
du -sh .gpu
echo "carry .gpu with the working tree, then: bash scripts/gpu_check.sh"
