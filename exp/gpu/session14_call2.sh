#!/usr/bin/env bash
# Session 14, device call 2 (COMMIT=<sha> of the tree sent): after the M1 Gluon kernel's first copies were moved
# ahead of its qk_prep prologue: pytest -m gpu of the whole tree; the kernels alone again
# (exp/gpu/fused_qk_micro.py --m1-only, B = 128 .. 2048); `ttt-decode check` of ttt-1b M1 dual Triton at B = 128
# (the fused Gluon route: decode vs forward, graph vs eager, compiled vs eager, batch vs single). Packed into
# $OUT/call2.tgz.
set -uo pipefail
cd "$(dirname "$0")/../.."
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; D=$OUT/call2; mkdir -p "$D"
C=${COMMIT:?pass COMMIT=<short sha> of the tree sent}
start=$SECONDS
PYTHONPATH=src timeout 300 python3 -m pytest -q -m gpu -W ignore -p no:cacheprovider tests/ > "$D/pytest_gpu.txt" 2>&1
tail -3 "$D/pytest_gpu.txt"
echo "t=$((SECONDS - start))"
PYTHONPATH=src timeout 100 python3 exp/gpu/fused_qk_micro.py --m1-only --batches 128,512,1024,2048 \
  --out "$D/fused_qk_micro.jsonl" --commit "$C" 2>&1 | grep "^|"
echo "t=$((SECONDS - start))"
PYTHONPATH=src TTT_DECODE_COMMIT=$C timeout $((560 - (SECONDS - start))) python3 -m ttt_decode.cli check \
  --model-name ttt-1b --inner_net mlp_1_dual_triton --batch 128 --steps 64 \
  --checks decode_vs_forward,graph_vs_eager,compiled_vs_eager,batch_vs_single --out "$D/check.jsonl" 2>&1 | tail -6
tar czf "$OUT/call2.tgz" -C "$D" . && rm -rf "$D"
echo "t=$((SECONDS - start))"
