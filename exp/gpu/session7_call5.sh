#!/usr/bin/env bash
# Session 7, device call 5: programmatic dependent launch for the decode step's Triton kernels (ops/pdl.py).
# The GPU tests of the kernels that changed, then the whole step before (OLD_SRC, a3862d4: no PDL) and after,
# interleaved: mamba-1.4b with fp16 SSM state and ttt-1b M1 dual Triton, B=512 (what 6 minutes of device time allowed).
# The PDL code (src/ttt_decode/ops/pdl.py and its uses) exists at f8fa900 only (it lost): run this from a
# checkout of it, with a3862d4's src unpacked at exp/gpu/_ab_old/src.
set -uo pipefail
cd "$(dirname "$0")/../.."
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
C=${COMMIT:-unknown}
start=$SECONDS
PYTHONPATH=src timeout 70 python3 -m pytest -q -m gpu -W ignore -p no:cacheprovider tests/ \
  -k "mamba or ttt_block" > "$OUT/pytest_gpu_pdl.txt" 2>&1; tail -2 "$OUT/pytest_gpu_pdl.txt"
echo "t=$((SECONDS - start))"
for spec in "float16 mamba-1.4b:mamba_triton" "- ttt-1b:mlp_1_dual_triton"; do
  set -- $spec
  left=$((300 - (SECONDS - start)))
  sd=$1; [ "$sd" = - ] && sd=
  [ $left -gt 100 ] && OLD_SRC=exp/gpu/_ab_old/src OLD_COMMIT=a3862d4 NEW_COMMIT=$C TAG=${1/-/ttt} \
    STATE_DTYPE=$sd SPECS="$2" SKIP_PYTEST=1 SKIP_PROFILE=1 BUDGET_S=$((left < 170 ? left : 170)) \
    bash exp/gpu/ab_step.sh
  echo "t=$((SECONDS - start))"
done
