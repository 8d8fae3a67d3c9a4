#!/usr/bin/env bash
# Session 6, device call 1: the M1 Gluon GPU tests left from session 5, then the Mamba dt_proj fusion sweep
# (exp/gpu/mamba_dt_sweep.py and the kernel it times exist at 9104151 only: the fused kernel lost).
set -uo pipefail
cd "$(dirname "$0")/../.."
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
C=${COMMIT:-unknown}
start=$SECONDS
PYTHONPATH=src timeout 150 python3 -m pytest -q -m gpu -W ignore -p no:cacheprovider tests/test_triton_ttt.py \
  -k gluon > "$OUT/pytest_gpu_gluon.txt" 2>&1; tail -2 "$OUT/pytest_gpu_gluon.txt"
echo "t=$((SECONDS - start))"
PYTHONPATH=src timeout 300 python3 exp/gpu/mamba_dt_sweep.py --out "$OUT/mamba_dt" --commit "$C" \
  > "$OUT/mamba_dt_log.txt" 2>&1; tail -45 "$OUT/mamba_dt_log.txt"
echo "t=$((SECONDS - start))"
