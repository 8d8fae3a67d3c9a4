#!/usr/bin/env bash
# Session 12, device call 1 (COMMIT=<sha>): kernel sweep round 15 at B = 512 (the split pass B under caps of
# 168 .. 128 registers) with the best configuration at B = 1024 / 2048, round15_small at B = 64 and 128; the
# model-level check of ttt-1b M2 dual Triton at B = 128 and 256 (the capped kernel: graph vs eager, fp16 vs
# float32 over 64 teacher-forced steps); then pytest -m gpu of the whole tree with the time left.
set -uo pipefail
cd "$(dirname "$0")/../.."
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
C=${COMMIT:-unknown}
start=$SECONDS
PYTHONPATH=src timeout 150 python3 exp/gpu/kernel_sweep.py --recipe round15 --commit "$C" --scan-batches 1024,2048 \
  --out "$OUT/sweep" 2>&1 | tail -11
for b in 64 128; do
  PYTHONPATH=src timeout 60 python3 exp/gpu/kernel_sweep.py --recipe round15_small --commit "$C" --batch $b \
    --scan-batches "" --out "$OUT/sweep_small" 2>&1 | tail -5
done
echo "t=$((SECONDS - start))"
for b in 128 256; do
  PYTHONPATH=src TTT_DECODE_COMMIT=$C timeout 120 python3 -m ttt_decode.cli check --model-name ttt-1b \
    --inner_net mlp_2_dual_triton --batch $b --steps 64 --checks graph_vs_eager,fidelity --out "$OUT/check.jsonl" 2>&1 | tail -4
done
echo "t=$((SECONDS - start))"
PYTHONPATH=src timeout $((570 - (SECONDS - start))) python3 -m pytest -q -m gpu -W ignore -p no:cacheprovider tests/ \
  > "$OUT/pytest_gpu.txt" 2>&1
tail -3 "$OUT/pytest_gpu.txt"
echo "t=$((SECONDS - start))"
