#!/usr/bin/env bash
# Session 13, device call 6 (COMMIT=<sha>): kernel sweep round 21 (L2 prefetch of W1 for the last position's
# update pass) at B = 512 with the best at B = 1024 / 2048, round21_small at B = 64.
set -uo pipefail
cd "$(dirname "$0")/../.."
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
C=${COMMIT:?pass COMMIT=<short sha> of the tree sent}
PYTHONPATH=src timeout 150 python3 exp/gpu/kernel_sweep.py --recipe round21 --commit "$C" --scan-batches 1024,2048 \
  --out "$OUT/sweep" 2>&1 | tail -11
PYTHONPATH=src timeout 60 python3 exp/gpu/kernel_sweep.py --recipe round21_small --commit "$C" --batch 64 \
  --scan-batches "" --out "$OUT/sweep_small" 2>&1 | tail -6
