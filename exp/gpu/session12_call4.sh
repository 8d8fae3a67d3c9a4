#!/usr/bin/env bash
# Session 12, device call 4 (COMMIT=<sha>): kernel sweep round18_small at B = 64 and 128 (launch shapes for the
# small batches), float64 check and per-position times.
set -uo pipefail
cd "$(dirname "$0")/../.."
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
for b in 64 128; do
  PYTHONPATH=src timeout 150 python3 exp/gpu/kernel_sweep.py --recipe round18_small --commit "${COMMIT:-unknown}" \
    --batch $b --scan-batches "" --out "$OUT/sweep_small" 2>&1 | tail -10
done
