#!/usr/bin/env bash
# Session 8, device call 3: inductor's output code of the ttt-1b M1 and M2 compiled step (B = 512): where the
# fused-prologue step's extra copy kernels (triton_poi_fused_slice_*_view) come from; ttt-tiny-64 had none.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/out}
for net in mlp_1_dual_triton mlp_2_dual_triton; do
PYTHONPATH=src TORCH_LOGS=output_code timeout 200 python3 - $net > "$OUT/codegen_$net.txt" 2>&1 <<'PY'
import sys
import torch
from ttt_decode.decode import DecodeSession
from ttt_decode.models import build
model = build("ttt-1b", inner_net=sys.argv[1], dtype=torch.float16, device="cuda")
s = DecodeSession(model, 512, cuda_graph=True, compile=True, max_steps=8)
for t in range(2):
    s.step(torch.zeros(512, dtype=torch.long, device="cuda"))
print("done")
PY
grep -n "fused_slice.*\.run\|_step_qk.default\|ttt_gate_norm.default" "$OUT/codegen_$net.txt" | head -8 | cut -c1-400
done
