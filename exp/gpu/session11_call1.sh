#!/usr/bin/env bash
# Session 11, device call 1 (COMMIT=<sha> OLD_COMMIT=<sha>): the M2 dual kernel under a register cap. Kernel sweep
# round 10 (float64 check, per-position times, registers), the whole-step A/B of ttt-1b M2 dual Triton at B = 512
# against $OLD_SRC (the round-9 default), then pytest -m gpu of the whole tree with the time left.
set -uo pipefail
cd "$(dirname "$0")/../.."
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
C=${COMMIT:-unknown}
start=$SECONDS
PYTHONPATH=src timeout 200 python3 exp/gpu/kernel_sweep.py --recipe round10 --commit "$C" --scan-batches 64,1024,2048 \
  --out "$OUT/sweep" 2>&1 | tail -13
echo "t=$((SECONDS - start))"
OLD_SRC=exp/gpu/_ab_old/src NEW_COMMIT=$C SKIP_PYTEST=1 SKIP_PROFILE=1 BUDGET_S=240 \
  SPECS="ttt-1b:mlp_2_dual_triton" bash exp/gpu/ab_step.sh
echo "t=$((SECONDS - start))"
left=$((585 - (SECONDS - start)))
PYTHONPATH=src timeout $left python3 -m pytest -q -m gpu -W ignore -p no:cacheprovider tests/ > "$OUT/pytest_gpu.txt" 2>&1
tail -3 "$OUT/pytest_gpu.txt"
echo "t=$((SECONDS - start))"
