#!/usr/bin/env bash
# Session 16, device call 4 (COMMIT=<sha>; no wheels), all the device time left (about 4 minutes, start included):
# the GPU tests of the fused step with the post-norm as the dispatchers now choose (M2 folds it from B = 512, M1
# runs gate_norm's kernel after the Gluon kernel; the fold forced in the Gluon kernel, counts after its loop).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export TTT_DECODE_COMMIT=${COMMIT:?pass COMMIT=<short sha> of the tree sent}
nvidia-smi --query-gpu=name --format=csv,noheader | tee "$OUT/gpu.txt"
PYTHONPATH=src timeout 100 python3 -m pytest -q -m gpu -W ignore -p no:cacheprovider tests/test_ttt_fused_qk.py \
  -k "gpu_fused_qk_gate_norm" > "$OUT/pytest_gpu_gate_norm.txt" 2>&1
tail -2 "$OUT/pytest_gpu_gate_norm.txt"
