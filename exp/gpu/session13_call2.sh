#!/usr/bin/env bash
# Session 13, device call 2 (COMMIT=<sha>, from the sending machine): kernel sweep round 20 (PREFETCH_B's cache
# rows against cache rows + W2 rows, each twice) at B = 512 with the best at B = 1024 / 2048, round20_small at
# B = 64 and 128.
set -uo pipefail
cd "$(dirname "$0")/../.."
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
C=${COMMIT:?pass COMMIT=<short sha> of the tree sent}
PYTHONPATH=src timeout 200 python3 exp/gpu/kernel_sweep.py --recipe round20 --commit "$C" --scan-batches 1024,2048 \
  --out "$OUT/sweep" 2>&1 | tail -10
for b in 64 128; do
  PYTHONPATH=src timeout 100 python3 exp/gpu/kernel_sweep.py --recipe round20_small --commit "$C" --batch $b \
    --scan-batches "" --out "$OUT/sweep_small" 2>&1 | tail -11
done
