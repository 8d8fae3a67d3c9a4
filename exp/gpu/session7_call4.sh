#!/usr/bin/env bash
# Session 7, device call 4: the GPU tests of the decode step's logits and of Mamba, then the mamba-1.4b step
# before (OLD_SRC, 21d79e4) and after (float32 logits from the head GEMM), fp32 and fp16 SSM state, B=512,
# then the new fp16 step's profile.
set -uo pipefail
cd "$(dirname "$0")/../.."
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
C=${COMMIT:-unknown}
start=$SECONDS
PYTHONPATH=src timeout 120 python3 -m pytest -q -m gpu -W ignore -p no:cacheprovider tests/ -k "mamba or logits" \
  > "$OUT/pytest_gpu_mamba_logits.txt" 2>&1; tail -2 "$OUT/pytest_gpu_mamba_logits.txt"
echo "t=$((SECONDS - start))"
for sd in float32 float16; do
  left=$((500 - (SECONDS - start)))
  [ $left -gt 150 ] && OLD_SRC=exp/gpu/_ab_old/src OLD_COMMIT=${OLD_COMMIT:-21d79e4} NEW_COMMIT=$C TAG=$sd \
    STATE_DTYPE=$sd SPECS="mamba-1.4b:mamba_triton" SKIP_PYTEST=1 SKIP_PROFILE=1 BUDGET_S=$((left / 2 + 40)) \
    bash exp/gpu/ab_step.sh
  echo "t=$((SECONDS - start))"
done
left=$((570 - (SECONDS - start)))
[ $left -gt 50 ] && PYTHONPATH=src TTT_DECODE_COMMIT=$C timeout $((left - 10)) python3 -m ttt_decode.cli profile \
  --logdir "$OUT/profile_float16" --model-name mamba-1.4b --inner_net mamba_triton --batch 512 --genlen 16 --use_compile \
  --state-dtype float16 2>&1 | grep -E "^\| |^step" | head -14
rm -f "$OUT"/profile_float16/trace*.json
echo "t=$((SECONDS - start))"
