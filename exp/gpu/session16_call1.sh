#!/usr/bin/env bash
# Session 16, device call 1 (COMMIT=<sha> of the tree sent; no wheels): the post-norm and gate folded into the
# fused dual kernels (TTT_DECODE_FUSED_GATE_NORM, default 1).
#   1. GPU tests of the fused step with the post-norm (ttt-1b shapes, the Gluon route with its deferred counts,
#      the fallback after qk_prep's kernel) and of the block kernels;
#   2. the compiled ttt-1b step's profile at B = 512: M1 and M2 with the fold (launches a step: 200 expected
#      from 224), then M1 without it (TTT_DECODE_FUSED_GATE_NORM=0, the A/B of device time a step, same machine);
#   3. `ttt-decode check` of M1 at B = 128 over 32 steps (two mini-batch ends): graph vs eager bitwise and
#      compiled vs eager with the fold.
# Everything under $OUT/call1, packed into $OUT/call1.tgz; a table last.
set -uo pipefail
cd "$(dirname "$0")/../.."
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; D=$OUT/call1; mkdir -p "$D"
C=${COMMIT:?pass COMMIT=<short sha> of the tree sent}
export TTT_DECODE_COMMIT=$C PYTHONPATH=src
TTD="python3 -m ttt_decode.cli"
start=$SECONDS
nvidia-smi --query-gpu=name,clocks.max.sm,memory.total --format=csv,noheader | tee "$D/gpu.txt"
timeout 170 python3 -m pytest -q -m gpu -W ignore -p no:cacheprovider tests/test_ttt_fused_qk.py tests/test_ttt_block.py \
  -k "gate_norm or gpu_fused_qk_matches or gpu_gate_norm" > "$D/pytest_gpu_gate_norm.txt" 2>&1
tail -2 "$D/pytest_gpu_gate_norm.txt"
echo "t=$((SECONDS - start))"
for run in "1 mlp_1_dual_triton" "1 mlp_2_dual_triton" "0 mlp_1_dual_triton"; do
  set -- $run
  TTT_DECODE_FUSED_GATE_NORM=$1 timeout 110 $TTD profile --logdir "$D/profile_gn$1" --model-name ttt-1b \
    --inner_net $2 --batch 512 --genlen 16 --use_compile 2>&1 | grep -E "^step" | sed "s/^/gn=$1 $2: /"
  echo "t=$((SECONDS - start))"
done
[ $((SECONDS - start)) -lt 480 ] && timeout $((580 - (SECONDS - start))) $TTD check --model-name ttt-1b \
  --inner_net mlp_1_dual_triton --batch 128 --steps 32 --checks graph_vs_eager,compiled_vs_eager \
  --out "$D/check.jsonl" 2>&1 | tail -4
rm -f "$D"/profile_gn*/*.json.gz.tmp
tar czf "$OUT/call1.tgz" -C "$D" . && rm -rf "$D"
echo "t=$((SECONDS - start))"
