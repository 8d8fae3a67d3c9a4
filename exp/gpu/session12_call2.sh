#!/usr/bin/env bash
# Session 12, device call 2 (COMMIT=<sha>): kernel sweep round 16 at B = 512 (tensor-core matrix-vector
# products: TC_A, TC_B, num_stages, with and without the register cap) with the best at B = 1024 / 2048,
# round16_small at B = 64 and 128, then the M2 dual GPU tests (the TC configurations against float64).
set -uo pipefail
cd "$(dirname "$0")/../.."
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
C=${COMMIT:-unknown}
start=$SECONDS
PYTHONPATH=src timeout 200 python3 exp/gpu/kernel_sweep.py --recipe round16 --commit "$C" --scan-batches 1024,2048 \
  --out "$OUT/sweep" 2>&1 | tail -13
for b in 64 128; do
  PYTHONPATH=src timeout 80 python3 exp/gpu/kernel_sweep.py --recipe round16_small --commit "$C" --batch $b \
    --scan-batches "" --out "$OUT/sweep_small" 2>&1 | tail -6
done
echo "t=$((SECONDS - start))"
PYTHONPATH=src timeout $((560 - (SECONDS - start))) python3 -m pytest -q -m gpu -W ignore -p no:cacheprovider \
  tests/test_triton_ttt.py -k "m2_dual or M2-dual or tensor_core" > "$OUT/pytest_gpu_m2_dual.txt" 2>&1
tail -3 "$OUT/pytest_gpu_m2_dual.txt"
echo "t=$((SECONDS - start))"
