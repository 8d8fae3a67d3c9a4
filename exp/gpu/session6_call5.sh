#!/usr/bin/env bash
# Session 6, device call 5 (as call 3, old = 9927b78): the Mamba GPU tests, then the whole
# mamba-1.4b step before (OLD_SRC) and after, fp32 and fp16 SSM state, B=512, then the fp16 profile.
set -uo pipefail
cd "$(dirname "$0")/../.."
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
C=${COMMIT:-unknown}
start=$SECONDS
PYTHONPATH=src timeout 150 python3 -m pytest -q -m gpu -W ignore -p no:cacheprovider tests/ -k mamba \
  > "$OUT/pytest_gpu_mamba.txt" 2>&1; tail -2 "$OUT/pytest_gpu_mamba.txt"
echo "t=$((SECONDS - start))"
for sd in float32 float16; do
  left=$((540 - (SECONDS - start)))
  [ $left -gt 150 ] && OLD_SRC=exp/gpu/_ab_old/src OLD_COMMIT=${OLD_COMMIT:-9927b78} NEW_COMMIT=$C TAG=$sd \
    STATE_DTYPE=$sd SPECS="mamba-1.4b:mamba_triton" SKIP_PYTEST=1 SKIP_PROFILE=1 BUDGET_S=$((left / 2 + 40)) \
    bash exp/gpu/ab_step.sh
  echo "t=$((SECONDS - start))"
done
left=$((560 - (SECONDS - start)))
[ $left -gt 50 ] && PYTHONPATH=src timeout $((left - 10)) python3 -m ttt_decode.cli profile --logdir "$OUT/profile_float16" \
  --model-name mamba-1.4b --inner_net mamba_triton --batch 512 --genlen 16 --use_compile --state-dtype float16 2>&1 \
  | grep -E "^\| |^step" | head -14
echo "t=$((SECONDS - start))"
