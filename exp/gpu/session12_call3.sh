#!/usr/bin/env bash
# Session 12, device call 3 (COMMIT=<sha>): kernel sweep round 17 at B = 512 (tensor-core pass B, with pass A
# or alone, under register caps between 168 and none) with the best at B = 1024 / 2048.
set -uo pipefail
cd "$(dirname "$0")/../.."
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
PYTHONPATH=src timeout 300 python3 exp/gpu/kernel_sweep.py --recipe round17 --commit "${COMMIT:-unknown}" \
  --scan-batches 1024,2048 --out "$OUT/sweep" 2>&1 | tail -16
