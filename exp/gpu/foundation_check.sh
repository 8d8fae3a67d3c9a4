#!/usr/bin/env bash
# Issue 2 GPU evidence: ttt-1b M1/M2, batch 16, 64 teacher-forced steps, fp16 and bf16:
# CUDA-graph path vs eager path (and vs a float32 reference), then torch.compile of the step.
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=src
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
for inner in mlp_1_dual mlp_2_dual; do
  for dt in float16 bfloat16; do
    python3 -m ttt_decode.cli check --model-name ttt-1b --inner_net $inner --dtype $dt --batch 16 --steps 64 \
      --checks graph_vs_eager,fidelity --out "$OUT/check_foundation.jsonl"
  done
done
python3 -m ttt_decode.cli check --model-name ttt-1b --inner_net mlp_2_dual --dtype float16 --batch 16 --steps 32 \
  --checks compiled_vs_eager --out "$OUT/check_foundation.jsonl"
python3 -m ttt_decode.cli generate --model-name ttt-1b --inner_net mlp_2_dual --batch 64 --promptlen 16 --genlen 64
python3 -m ttt_decode.cli generate --model-name ttt-1b --inner_net mlp_2_dual --batch 64 --promptlen 16 --genlen 64 --use_compile
