#!/usr/bin/env bash
# Session 8, device call 1: qk_prep folded into the dual kernels' prologue (decode_step_dual_qk).
# 1. pytest -m gpu of the fused steps (tests/test_ttt_fused_qk.py: Triton M1/M2 at B = 16, 512 in every
#    dtype, the Gluon M1 kernel's fused prologue at B = 512 and with 2 programs a multiprocessor), the
#    M1 Gluon kernels and the TTT block's kernels and model tests;
# 2. the A/B of the whole step (exp/gpu/ab_step.sh): ttt-1b M1 and M2 dual Triton at B = 512, the src
#    before the fusion ($OLD_SRC, commit $OLD_COMMIT) against this tree, then the compiled step's profile
#    of M1 (launches, inner kernel, fused elementwise).
#   COMMIT=<sha> OLD_COMMIT=<sha> bash exp/gpu/session8_call1.sh
set -uo pipefail
cd "$(dirname "$0")/../.."
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
C=${COMMIT:-unknown}
start=$SECONDS
PYTHONPATH=src timeout 200 python3 -m pytest -q -m gpu -W ignore -p no:cacheprovider tests/test_ttt_fused_qk.py \
  tests/test_triton_ttt.py tests/test_ttt_block.py > "$OUT/pytest_gpu_fused_qk.txt" 2>&1
tail -3 "$OUT/pytest_gpu_fused_qk.txt"
echo "t=$((SECONDS - start))"
OLD_SRC=exp/gpu/_ab_old/src NEW_COMMIT=$C SKIP_PYTEST=1 BUDGET_S=$((575 - (SECONDS - start))) \
  SPECS="ttt-1b:mlp_1_dual_triton ttt-1b:mlp_2_dual_triton" bash exp/gpu/ab_step.sh
echo "t=$((SECONDS - start))"
