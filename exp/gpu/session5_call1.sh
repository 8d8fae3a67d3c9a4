#!/usr/bin/env bash
# One device call: GPU tests of the M1 Gluon kernels, the round-8 kernel sweep (M1 primal), the GEMM shapes,
# and the A/B of the shared q/k conv ring on the whole M1 step. Everything under $OUT.
set -uo pipefail
cd "$(dirname "$0")/../.."
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
C=${COMMIT:-unknown}
start=$SECONDS
PYTHONPATH=src timeout 150 python3 -m pytest -q -m gpu -W ignore -p no:cacheprovider tests/test_triton_ttt.py \
  -k "gluon or primal" > "$OUT/pytest_gpu_m1_gluon.txt" 2>&1; tail -2 "$OUT/pytest_gpu_m1_gluon.txt"
mkdir -p "$OUT/k512" "$OUT/k128" "$OUT/k64"
PYTHONPATH=src timeout 200 python3 exp/gpu/kernel_sweep.py --recipe round8 --batch 512 --scan-batches 256,1024,2048 \
  --check-batch 64 --out "$OUT/k512" --commit "$C" > "$OUT/k512/log.txt" 2>&1; tail -12 "$OUT/k512/log.txt"
for b in 128 64; do
  PYTHONPATH=src timeout 100 python3 exp/gpu/kernel_sweep.py --recipe round8 --batch $b --scan-batches "" \
    --check-batch 16 --out "$OUT/k$b" --commit "$C" > "$OUT/k$b/log.txt" 2>&1; tail -7 "$OUT/k$b/log.txt"
done
echo "t=$((SECONDS - start))"
PYTHONPATH=src timeout 90 python3 exp/gpu/gemm_shapes.py --out "$OUT/gemm" --commit "$C" 2>&1 | tail -20
echo "t=$((SECONDS - start))"
# The shared q/k ring against the commit before it (src at $OLD_SRC), the M1 step at B=512.
left=$((560 - (SECONDS - start)))
[ $left -gt 120 ] && OLD_SRC=exp/gpu/_ab_old/src OLD_COMMIT=${OLD_COMMIT:-47c78b3} NEW_COMMIT=$C \
  SPECS="ttt-1b:mlp_1_dual_triton" SKIP_PYTEST=1 BUDGET_S=$left bash exp/gpu/ab_step.sh
echo "t=$((SECONDS - start))"
