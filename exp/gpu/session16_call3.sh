#!/usr/bin/env bash
# Session 16, device call 3 (COMMIT=<sha>; no wheels), after call 1 measured the M1 Gluon kernel with the post-norm
# counted one item late at 187 us a call against 73 us without it (profile_gn1 at d744422): the counts moved
# after each program's loop (GN_AFTER_LOOP, one release for all of a program's items).
#   1. the GPU tests of the fused step with the post-norm again (the Gluon route now counts after its loop);
#   2. exp/gpu/fused_qk_micro.py --gate-norm at B = 64, 128, 512: the post-norm as its own kernel after the fused
#      step against the kernels doing it (the Gluon kernel both ways), per position, checked first;
#   3. the compiled M1 step's profile at B = 512 with the default (launches, device time a step).
set -uo pipefail
cd "$(dirname "$0")/../.."
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; D=$OUT/call3; mkdir -p "$D"
C=${COMMIT:?pass COMMIT=<short sha> of the tree sent}
export TTT_DECODE_COMMIT=$C PYTHONPATH=src
start=$SECONDS
nvidia-smi --query-gpu=name,clocks.max.sm,memory.total --format=csv,noheader | tee "$D/gpu.txt"
timeout 150 python3 -m pytest -q -m gpu -W ignore -p no:cacheprovider tests/test_ttt_fused_qk.py -k "gate_norm" \
  > "$D/pytest_gpu_gate_norm.txt" 2>&1
tail -2 "$D/pytest_gpu_gate_norm.txt"
echo "t=$((SECONDS - start))"
timeout 200 python3 exp/gpu/fused_qk_micro.py --gate-norm --batches 64,128,512 --commit "$C" \
  --out "$D/fused_qk_gate_norm.jsonl" 2>&1 | grep "^|"
echo "t=$((SECONDS - start))"
timeout 100 python3 -m ttt_decode.cli profile --logdir "$D/profile" --model-name ttt-1b --inner_net mlp_1_dual_triton \
  --batch 512 --genlen 16 --use_compile 2>&1 | grep -E "^step|^\| .(_m1|_gate|triton_red)"
tar czf "$OUT/call3.tgz" -C "$D" . && rm -rf "$D"
echo "t=$((SECONDS - start))"
