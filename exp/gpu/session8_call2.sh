#!/usr/bin/env bash
# Session 8, device call 2: why the fused-prologue step launches 2 more kernels a block (the compiled step's
# profile in call 1: triton_poi_fused_slice_ttt_linear_dual_step_qk_view_{0,1} and ..._gate_norm_view_2),
# from inductor's output code of a small model's compiled step; then the kernels alone
# (exp/gpu/fused_qk_micro.py: qk_prep + step against the fused step, M1 Triton / Gluon and M2, B = 64..512).
set -uo pipefail
cd "$(dirname "$0")/../.."
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
C=${COMMIT:-unknown}
start=$SECONDS
PYTHONPATH=src TORCH_LOGS=output_code timeout 150 python3 - > "$OUT/codegen_log.txt" 2>&1 <<'PY'
import torch
from ttt_decode.decode import DecodeSession
from ttt_decode.models import build
model = build("ttt-tiny-64", inner_net="mlp_2_dual_triton", dtype=torch.float16, device="cuda")
s = DecodeSession(model, 4, cuda_graph=True, compile=True, max_steps=8)
for t in range(3):
    s.step(torch.zeros(4, dtype=torch.long, device="cuda"))
print("done")
PY
grep -n "fused_slice\|ttt_mlp_dual_step_qk.default\|ttt_gate_norm.default\|def call" "$OUT/codegen_log.txt" | head -30
echo "t=$((SECONDS - start))"
PYTHONPATH=src timeout $((560 - (SECONDS - start))) python3 exp/gpu/fused_qk_micro.py --out "$OUT/fused_qk_micro.jsonl" \
  --commit "$C" --batches 64,128,512 2>&1 | grep -v '^{' | tail -30
echo "t=$((SECONDS - start))"
