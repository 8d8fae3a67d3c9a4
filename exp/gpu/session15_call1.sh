#!/usr/bin/env bash
# Session 15, device call 1 (COMMIT=<sha> of the tree sent; no wheels): the whole `pytest -m gpu` at the last
# session's final commit (its b6f1130.. tests, the record_tokens kernel and the zero-residual buffer had not run on
# a GPU); the K-split GEMM micro-benchmark (exp/gpu/splitk_gemm.py); the compiled ttt-1b M1 step's profile at
# B=512 (launches a step: 229 measured at 9340303, 224 predicted). Everything under $OUT/call1, packed last.
set -uo pipefail
cd "$(dirname "$0")/../.."
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; D=$OUT/call1; mkdir -p "$D"
C=${COMMIT:?pass COMMIT=<short sha> of the tree sent}
export TTT_DECODE_COMMIT=$C
start=$SECONDS
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv > "$D/gpu.txt"; cat "$D/gpu.txt"
PYTHONPATH=src timeout 240 python3 -m pytest -q -m gpu -W ignore -p no:cacheprovider tests/ > "$D/pytest_gpu.txt" 2>&1
tail -3 "$D/pytest_gpu.txt"; echo "t=$((SECONDS - start))"
PYTHONPATH=src timeout 150 python3 exp/gpu/splitk_gemm.py --out "$D" --commit "$C" > "$D/splitk_log.txt" 2>&1
echo "t=$((SECONDS - start))"
PYTHONPATH=src timeout $((560 - (SECONDS - start))) python3 -m ttt_decode.cli profile --logdir "$D/profile" \
  --model-name ttt-1b --inner_net mlp_1_dual_triton --batch 512 --genlen 16 --use_compile 2>&1 \
  | grep -E "^\| |^step" | head -12
echo "t=$((SECONDS - start))"
grep -E "^\||^matmul" "$D/splitk_log.txt" | grep -E "B|512|matmul|shape"
tar czf "$OUT/call1.tgz" -C "$D" . && rm -rf "$D"
