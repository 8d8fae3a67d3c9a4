#!/usr/bin/env bash
# Session 6, device call 4 (final code): a finer sweep of the state pass's tiles, `ttt-decode check` for
# mamba-1.4b (fp32 and fp16 state), and one sweep of mamba-1.4b (fp32, fp16 state) with mamba-ssm's row.
# Needs the prebuilt mamba-ssm and causal-conv1d wheels in .whl/ (git-ignored), sent with the call's carry.
set -uo pipefail
cd "$(dirname "$0")/../.."
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
C=${COMMIT:-unknown}
start=$SECONDS
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:src
PYTHONPATH=src timeout 120 python3 exp/gpu/mamba_config_sweep.py --out "$OUT/mamba_cfg2" --commit "$C" --kernels ssm \
  --batches 512,1024 --ssm-configs 64:1:1,32:1:1,128:1:1,64:1:2,128:1:2,256:1:2,256:1:1 \
  > "$OUT/mamba_cfg2_log.txt" 2>&1; grep -v '^{' "$OUT/mamba_cfg2_log.txt" | tail -30
echo "t=$((SECONDS - start))"
for sd in float32 float16; do
  timeout 120 python3 -m ttt_decode.cli check --model-name mamba-1.4b --inner_net mamba_triton --state-dtype $sd \
    --batch 16 --steps 64 --checks decode_vs_forward,graph_vs_eager,compiled_vs_eager,batch_vs_single \
    --out "$OUT/check_mamba.jsonl" 2>&1 | tail -6
done
echo "t=$((SECONDS - start))"
timeout 200 python3 -m ttt_decode.cli sweep --logdir "$OUT/sweep" --models mamba-1.4b,mamba-ssm:mamba-1.4b \
  --inner-nets mamba_triton --batches 512 --genlens 128 --use_compile --repeats 2 2>&1 | tail -3
timeout 100 python3 -m ttt_decode.cli sweep --logdir "$OUT/sweep_fp16" --models mamba-1.4b --inner-nets mamba_triton \
  --batches 512 --genlens 128 --use_compile --repeats 2 --state-dtype float16 2>&1 | tail -3
for d in sweep sweep_fp16; do
  python3 -m ttt_decode.cli report "$OUT/$d" --out "$OUT/$d/report" 2>&1 | tail -8
  rm -rf "$OUT/$d/.compile-cache"
done
echo "t=$((SECONDS - start))"
