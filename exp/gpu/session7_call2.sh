#!/usr/bin/env bash
# Session 7, device call 2: the fused conv + x_proj kernel's tiles against the unfused pair
# (exp/gpu/conv_xproj_sweep.py), its GPU tests and every GPU test that names mamba, then the whole
# mamba-1.4b step before (OLD_SRC, f151a37) and after, fp32 and fp16 SSM state, B=512.
# The fused kernel and exp/gpu/conv_xproj_sweep.py exist at 64ecead only (they lost): run this from a checkout of it.
set -uo pipefail
cd "$(dirname "$0")/../.."
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
C=${COMMIT:-unknown}
start=$SECONDS
PYTHONPATH=src timeout 150 python3 exp/gpu/conv_xproj_sweep.py --out "$OUT" --commit "$C" > "$OUT/conv_xproj_log.txt" 2>&1
grep -v '^{' "$OUT/conv_xproj_log.txt" | tail -60
echo "t=$((SECONDS - start))"
PYTHONPATH=src timeout 150 python3 -m pytest -q -m gpu -W ignore -p no:cacheprovider tests/ -k mamba \
  > "$OUT/pytest_gpu_mamba.txt" 2>&1; tail -3 "$OUT/pytest_gpu_mamba.txt"
echo "t=$((SECONDS - start))"
for sd in float32 float16; do
  left=$((570 - (SECONDS - start)))
  [ $left -gt 150 ] && OLD_SRC=exp/gpu/_ab_old/src OLD_COMMIT=${OLD_COMMIT:-f151a37} NEW_COMMIT=$C TAG=$sd \
    STATE_DTYPE=$sd SPECS="mamba-1.4b:mamba_triton" SKIP_PYTEST=1 SKIP_PROFILE=1 BUDGET_S=$((left / 2 + 40)) \
    bash exp/gpu/ab_step.sh
  echo "t=$((SECONDS - start))"
done
