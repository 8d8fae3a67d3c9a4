#!/usr/bin/env bash
# Session 17, device call 1 (COMMIT=<sha> of the tree sent, evaluated on the local machine; no wheels), for the first
# session lent a GPU after the seventeenth (which had none). The GPU tests and micro-benchmarks of what no GPU has run:
#   1. pytest -m gpu of the post-norm as the dispatchers choose it (session 16's final dispatch), the kernels taking
#      K-split partials (TTT's pre_conv, Mamba's add_rms_norm in a graph decode), the SwiGLU gate_up kernel, and a
#      4-layer ttt-1b with both of session 17's changes against the plain model (graph and eager);
#   2. the K-split GEMM micro-benchmark on this GPU (exp/gpu/splitk_gemm.py; ops/split_k.py's table is the H100's);
#   3. the SwiGLU gate_up kernel against cuBLAS + the compiled silu * up kernel, over a grid of tile configurations
#      (exp/gpu/swiglu_gemm_micro.py; ops/swiglu_gemm.config_for is unmeasured).
# Everything under $OUT/call1 (packed into $OUT/call1.tgz), the tables last. Then session17_call2.sh (whole step).
set -uo pipefail
cd "$(dirname "$0")/../.."
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; D=$OUT/call1; mkdir -p "$D"
C=${COMMIT:?pass COMMIT=<short sha> of the tree sent}
export TTT_DECODE_COMMIT=$C
start=$SECONDS
nvidia-smi --query-gpu=name,clocks.max.sm,memory.total --format=csv,noheader | tee "$D/gpu.txt"
PYTHONPATH=src timeout 240 python3 -m pytest -q -m gpu -W ignore -p no:cacheprovider tests/test_ttt_fused_qk.py \
  tests/test_ttt_block.py tests/test_swiglu_gemm.py tests/test_mamba.py \
  -k "gpu_fused_qk_gate_norm or gpu_pre_conv or gpu_swiglu or gpu_model_with_split or gpu_graph_decode" \
  > "$D/pytest_gpu.txt" 2>&1
tail -1 "$D/pytest_gpu.txt"
PYTHONPATH=src timeout 90 python3 exp/gpu/splitk_gemm.py --out "$D" --commit "$C" --batches 256,512,1024 \
  --splits 2,4 > "$D/splitk_log.txt" 2>&1
PYTHONPATH=src timeout $((560 - (SECONDS - start))) python3 exp/gpu/swiglu_gemm_micro.py --out "$D" --commit "$C" \
  --batches 64,256,512,1024 > "$D/swiglu_log.txt" 2>&1
grep -E "^matmul|^\| shape|ttt.down" "$D/splitk_log.txt" | head -12
grep -E "^matmul|^\|" "$D/swiglu_log.txt"
tar czf "$OUT/call1.tgz" -C "$D" . && rm -rf "$D"
echo "t=$((SECONDS - start))"
