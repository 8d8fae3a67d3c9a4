#!/usr/bin/env bash
# NOT RUN in session 16: the device time was spent (two calls on H100s, 940 s held, and nine refused requests, which
# cost 600 s more). Session 16, device call 2 (COMMIT=<sha> of the tree sent; .whl/site.tar.xz carried as in session14_call3.sh,
# exp/results/ moved out of the tree for the 64 MiB a call carries): the post-norm's GPU tests as dispatched now;
# the final code in one sweep folder, as
# session 14's final sweep ran it: ttt-1b M2 and M1 at B = 512 and 1024 (the post-norm in the inner kernels);
# mamba-1.4b and mamba-ssm:mamba-1.4b; mamba-1.4b with fp16 state; its report; then `ttt-decode check` of M2 at
# B = 512 over 20 steps (the post-norm folded there: graph vs eager, compiled vs eager). Packed into
# $OUT/sweep.tgz and $OUT/call2.tgz.
set -uo pipefail
cd "$(dirname "$0")/../.."
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; D=$OUT/call2; mkdir -p "$D"
C=${COMMIT:?pass COMMIT=<short sha> of the tree sent}
export TTT_DECODE_COMMIT=$C
start=$SECONDS
nvidia-smi --query-gpu=name,clocks.max.sm,memory.total --format=csv,noheader | tee "$D/gpu.txt"
PYTHONPATH=src timeout 70 python3 -m pytest -q -m gpu -W ignore -p no:cacheprovider tests/test_ttt_fused_qk.py \
  -k "gpu_fused_qk_gate_norm" > "$D/pytest_gpu_gate_norm.txt" 2>&1
tail -1 "$D/pytest_gpu_gate_norm.txt"
tar xJf .whl/site.tar.xz -C /tmp
export PYTHONPATH=/tmp/site:src
TTD="python3 -m ttt_decode.cli"
S="--logdir $OUT/sweep --genlens 128 --use_compile --repeats 2"
timeout 210 $TTD sweep $S --models ttt-1b --inner-nets mlp_2_dual_triton,mlp_1_dual_triton --batches 512,1024 2>&1 | tail -1
timeout 120 $TTD sweep $S --models mamba-1.4b,mamba-ssm:mamba-1.4b --inner-nets mamba_triton --batches 512 2>&1 | tail -1
timeout 80 $TTD sweep $S --models mamba-1.4b --inner-nets mamba_triton --batches 512 --state-dtype float16 2>&1 | tail -1
rm -rf "$OUT"/sweep/.compile-cache "$OUT"/sweep/.sweep/*.lock "$OUT"/sweep/.sweep/lock
$TTD report "$OUT/sweep" --out "$OUT/sweep/report" > "$OUT/sweep/report_log.txt" 2>&1
grep "^|" "$OUT/sweep/report/report.md" | head -12
tar czf "$OUT/sweep.tgz" -C "$OUT/sweep" . && rm -rf "$OUT/sweep"
echo "t=$((SECONDS - start))"
[ $((SECONDS - start)) -lt 470 ] && PYTHONPATH=src timeout $((585 - (SECONDS - start))) $TTD check --model-name ttt-1b \
  --inner_net mlp_2_dual_triton --batch 512 --steps 20 --checks graph_vs_eager,compiled_vs_eager \
  --out "$D/check.jsonl" 2>&1 | tail -5
tar czf "$OUT/call2.tgz" -C "$D" . && rm -rf "$D"
echo "t=$((SECONDS - start))"
