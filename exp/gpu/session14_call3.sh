#!/usr/bin/env bash
# Session 14, device call 3 (COMMIT=<sha> of the tree sent; .whl/site.tar.xz carried as in session13_call5.sh):
# the Gluon / fused-prologue GPU tests after gluon_decode.copyable began asking for row strides of a multiple of
# 16 elements, and the engine's bookkeeping kernel's (ops/step_tokens.py); then the final code in one sweep
# folder, as session 13's final sweep ran it: ttt-1b M2 and M1 at B = 512 and 1024; mamba-1.4b and
# mamba-ssm:mamba-1.4b; mamba-1.4b with fp16 state; its report; then the compiled M1 step's profile at B=512
# (launches a step). Packed into $OUT/call3.tgz and $OUT/sweep.tgz. The tree plus .whl/site.tar.xz is over the
# 64 MiB a call carries with exp/results/ in it (exp/NOTES.md, fourteenth session).
set -uo pipefail
cd "$(dirname "$0")/../.."
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; D=$OUT/call3; mkdir -p "$D"
C=${COMMIT:?pass COMMIT=<short sha> of the tree sent}
export TTT_DECODE_COMMIT=$C
start=$SECONDS
tar xJf .whl/site.tar.xz -C /tmp
PYTHONPATH=src timeout 150 python3 -m pytest -q -m gpu -W ignore -p no:cacheprovider tests/test_ttt_fused_qk.py \
  tests/test_step_tokens.py tests/test_triton_ttt.py -k "fused or gluon or record" > "$D/pytest_gpu_fused_gluon.txt" 2>&1
tail -2 "$D/pytest_gpu_fused_gluon.txt"
echo "t=$((SECONDS - start))"
export PYTHONPATH=/tmp/site:src
TTD="python3 -m ttt_decode.cli"
S="--logdir $OUT/sweep --genlens 128 --use_compile --repeats 2"
timeout 200 $TTD sweep $S --models ttt-1b --inner-nets mlp_2_dual_triton,mlp_1_dual_triton --batches 512,1024 2>&1 | tail -1
timeout 120 $TTD sweep $S --models mamba-1.4b,mamba-ssm:mamba-1.4b --inner-nets mamba_triton --batches 512 2>&1 | tail -1
timeout 80 $TTD sweep $S --models mamba-1.4b --inner-nets mamba_triton --batches 512 --state-dtype float16 2>&1 | tail -1
rm -rf "$OUT"/sweep/.compile-cache "$OUT"/sweep/.sweep/*.lock "$OUT"/sweep/.sweep/lock
$TTD report "$OUT/sweep" --out "$OUT/sweep/report" > "$OUT/sweep/report_log.txt" 2>&1
grep "^|" "$OUT/sweep/report/report.md" | head -8
tar czf "$OUT/sweep.tgz" -C "$OUT/sweep" . && rm -rf "$OUT/sweep"
echo "t=$((SECONDS - start))"
PYTHONPATH=src timeout $((580 - (SECONDS - start))) $TTD profile --logdir "$D/profile" --model-name ttt-1b \
  --inner_net mlp_1_dual_triton --batch 512 --genlen 16 --use_compile 2>&1 | grep -E "^\| |^step" | head -8
tar czf "$OUT/call3.tgz" -C "$D" . && rm -rf "$D"
echo "t=$((SECONDS - start))"
