#!/usr/bin/env bash
# Session 6, device call 2: the Mamba decode kernels' launch configurations on the H200, and the compiled
# mamba-1.4b step profiled with fp32 and with fp16 SSM state (B=512).
set -uo pipefail
cd "$(dirname "$0")/../.."
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
C=${COMMIT:-unknown}
start=$SECONDS
PYTHONPATH=src timeout 240 python3 exp/gpu/mamba_config_sweep.py --out "$OUT/mamba_cfg" --commit "$C" \
  > "$OUT/mamba_cfg_log.txt" 2>&1; grep -v '^{' "$OUT/mamba_cfg_log.txt" | tail -110
echo "t=$((SECONDS - start))"
for sd in float32 float16; do
  PYTHONPATH=src timeout 150 python3 -m ttt_decode.cli profile --logdir "$OUT/profile_$sd" --model-name mamba-1.4b \
    --inner_net mamba_triton --batch 512 --genlen 16 --use_compile --state-dtype $sd 2>&1 | grep -E "^\| |^step" | head -14
  echo "t=$((SECONDS - start))"
done
