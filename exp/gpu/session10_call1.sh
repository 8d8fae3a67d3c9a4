#!/usr/bin/env bash
# Session 10, device call 1 (COMMIT=<sha> OLD_COMMIT=<sha>): the M2 dual kernel's end-of-mini-batch W2 update
# inside pass B (W2_IN_B). Kernel sweep round 9 (float64 check, per-position times, registers), pytest -m gpu
# of the TTT kernel tests, then the whole-step A/B of ttt-1b M2 dual Triton at B = 512 against $OLD_SRC.
set -uo pipefail
cd "$(dirname "$0")/../.."
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
C=${COMMIT:-unknown}
start=$SECONDS
PYTHONPATH=src timeout 200 python3 exp/gpu/kernel_sweep.py --recipe round9 --commit "$C" --scan-batches 64,2048 \
  --out "$OUT/sweep" 2>&1 | tail -12
echo "t=$((SECONDS - start))"
PYTHONPATH=src timeout 150 python3 -m pytest -q -m gpu -W ignore -p no:cacheprovider tests/test_triton_ttt.py \
  tests/test_ttt_fused_qk.py > "$OUT/pytest_gpu_ttt.txt" 2>&1
tail -3 "$OUT/pytest_gpu_ttt.txt"
echo "t=$((SECONDS - start))"
OLD_SRC=exp/gpu/_ab_old/src NEW_COMMIT=$C SKIP_PYTEST=1 SKIP_PROFILE=1 BUDGET_S=$((570 - (SECONDS - start))) \
  SPECS="ttt-1b:mlp_2_dual_triton" bash exp/gpu/ab_step.sh
echo "t=$((SECONDS - start))"
