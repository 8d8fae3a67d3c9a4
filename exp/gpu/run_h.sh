#!/usr/bin/env bash
# Device run H (issue 3): the end-of-mini-batch update as one fp16 MMA pass (fp16 cache rows) instead of
# 3xTF32: the Triton kernels' GPU tests at ttt-1b shapes, then the micro-benchmark rows of the dual and
# primal kernels at B = 256, 512, 1024 (one run, one copy bandwidth). Results to $OUT.
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=src TTT_DECODE_COMMIT=${COMMIT:-unknown}
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
timeout 150 python3 -m pytest -q -m gpu -W ignore tests/test_triton_ttt.py 2>&1 | tail -3 | tee "$OUT/pytest_gpu_triton.txt"
OUT=$OUT/micro.jsonl BATCHES=256,512,1024 KERNELS=mlp_2_dual_triton,mlp_2_primal_triton,mlp_1_dual_triton \
  timeout 120 bash scripts/micro.sh --plot-dir "$OUT" > "$OUT/micro_log.txt" 2>&1
grep -E "check|copy bandwidth" "$OUT/micro_log.txt" | cut -c1-60; tail -5 "$OUT/micro_log.txt"
