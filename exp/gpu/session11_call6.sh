#!/usr/bin/env bash
# Session 11, device call 6 (COMMIT=<sha>): kernel sweep round 14 at B = 512 (KEEP_W2_LAST: the last position's W2
# reads without the evict-first hint), float64 check and per-position times.
set -uo pipefail
cd "$(dirname "$0")/../.."
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
PYTHONPATH=src timeout 100 python3 exp/gpu/kernel_sweep.py --recipe round14 --commit "${COMMIT:-unknown}" \
  --scan-batches "" --out "$OUT/sweep" 2>&1 | tail -6
