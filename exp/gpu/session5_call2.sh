#!/usr/bin/env bash
# Second device call: GPU tests of the fused block kernels, the A/B of the tap-major conv weights on the M1
# and M2 steps (old src at exp/gpu/_ab_old/src), then the four TTT kernels at their defaults (micro) and by
# mini-batch position. Everything under $OUT.
set -uo pipefail
cd "$(dirname "$0")/../.."
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
C=${COMMIT:-unknown}
start=$SECONDS
PYTHONPATH=src timeout 100 python3 -m pytest -q -m gpu -W ignore -p no:cacheprovider tests/test_ttt_block.py \
  > "$OUT/pytest_gpu_ttt_block.txt" 2>&1; tail -1 "$OUT/pytest_gpu_ttt_block.txt"
OLD_SRC=exp/gpu/_ab_old/src OLD_COMMIT=${OLD_COMMIT:-d24efa7} NEW_COMMIT=$C \
  SPECS="ttt-1b:mlp_1_dual_triton ttt-1b:mlp_2_dual_triton" SKIP_PYTEST=1 BUDGET_S=300 bash exp/gpu/ab_step.sh
echo "t=$((SECONDS - start))"
COMMIT=$C bash exp/gpu/run.sh micro
echo "t=$((SECONDS - start))"
COMMIT=$C bash exp/gpu/run.sh positions
echo "t=$((SECONDS - start))"
