#!/usr/bin/env bash
# Session 8, device call 3 (COMMIT=<sha> OLD_COMMIT=<sha>): inductor's output code of the ttt-1b M1 and M2 compiled step (B = 512): where the
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
# The fused steps' GPU tests at this tree (the M1 Gluon route now qk_prep's kernel + the Gluon kernel).
PYTHONPATH=src timeout 150 python3 -m pytest -q -m gpu -W ignore -p no:cacheprovider tests/test_ttt_fused_qk.py \
  > "$OUT/pytest_gpu_fused_qk.txt" 2>&1; tail -2 "$OUT/pytest_gpu_fused_qk.txt"
# M2's whole-step A/B (old src at $OLD_SRC), then the compiled M2 step's profile.
OLD_SRC=exp/gpu/_ab_old/src NEW_COMMIT=${COMMIT:-unknown} SKIP_PYTEST=1 SKIP_PROFILE=1 BUDGET_S=150 \
  SPECS="ttt-1b:mlp_2_dual_triton" bash exp/gpu/ab_step.sh
PYTHONPATH=src TTT_DECODE_COMMIT=${COMMIT:-unknown} timeout 120 python3 -m ttt_decode.cli profile --logdir "$OUT/profile_m2" \
  --model-name ttt-1b --inner_net mlp_2_dual_triton --batch 512 --genlen 16 --use_compile 2>&1 | grep -E "^\| |^step" | head -14
rm -rf "$OUT"/profile_m2/.compile-cache
