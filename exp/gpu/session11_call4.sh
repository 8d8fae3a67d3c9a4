#!/usr/bin/env bash
# Session 11, device call 4 (COMMIT=<sha> OLD_COMMIT=<sha>): kernel sweep round 13 at B = 512 (W1 updated in the
# split pass B), round13_small at B = 128, the whole-step A/B of ttt-1b M2 dual Triton at B = 512 and 1024 against
# $OLD_SRC (the round-9 default), then pytest -m gpu of the TTT kernel tests.
set -uo pipefail
cd "$(dirname "$0")/../.."
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
C=${COMMIT:-unknown}
start=$SECONDS
PYTHONPATH=src timeout 120 python3 exp/gpu/kernel_sweep.py --recipe round13 --commit "$C" --scan-batches 1024,2048 \
  --out "$OUT/sweep" 2>&1 | tail -9
for b in 128; do
  PYTHONPATH=src timeout 50 python3 exp/gpu/kernel_sweep.py --recipe round13_small --commit "$C" --batch $b \
    --scan-batches "" --out "$OUT/sweep_small" 2>&1 | tail -4
done
echo "t=$((SECONDS - start))"
OLD_SRC=exp/gpu/_ab_old/src NEW_COMMIT=$C SKIP_PYTEST=1 SKIP_PROFILE=1 BUDGET_S=230 BATCHES="512,1024" \
  SPECS="ttt-1b:mlp_2_dual_triton" bash exp/gpu/ab_step.sh
echo "t=$((SECONDS - start))"
PYTHONPATH=src timeout $((580 - (SECONDS - start))) python3 -m pytest -q -m gpu -W ignore -p no:cacheprovider tests/test_triton_ttt.py \
  tests/test_ttt_fused_qk.py > "$OUT/pytest_gpu_ttt.txt" 2>&1
tail -3 "$OUT/pytest_gpu_ttt.txt"
echo "t=$((SECONDS - start))"
