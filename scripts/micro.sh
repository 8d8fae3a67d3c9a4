#!/usr/bin/env bash
# Kernel micro-benchmark at ttt-1b layer shapes: per-layer time of the TTT decode kernels (dual Triton,
# primal Triton, dual torch.compile) over batch sizes, each checked against the float64 reference
# first; achieved GB/s on the compulsory bytes and % of the copy bandwidth measured in the same run.
# Appends to exp/results/<gpu>/micro.jsonl and writes a PNG + CSV there; prints a table last.
#   BATCHES=16,256,512 STATE_DTYPE=bfloat16 bash scripts/micro.sh
#   KERNELS=mamba_step_triton,mamba_step_ref BATCHES=256,512,1024,2048 bash scripts/micro.sh
# On a CPU-only machine: TRITON_INTERPRET=1 MODEL=ttt-tiny BATCHES=2 DEVICE=cpu bash scripts/micro.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
PYTHON=${PYTHON:-python3}
$PYTHON -m ttt_decode.bench.micro --model "${MODEL:-ttt-1b}" \
    --kernels "${KERNELS:-mlp_2_dual_triton,mlp_2_primal_triton,mlp_2_dual_compiled,mlp_1_dual_triton,mlp_1_primal_triton}" \
    --batch "${BATCHES:-16,32,64,128,256,512,1024}" --state-dtype "${STATE_DTYPE:-float16}" --dtype "${DTYPE:-float16}" \
    ${DEVICE:+--device "$DEVICE"} ${OUT:+--out "$OUT"} "$@"
