#!/usr/bin/env bash
# Session 8, device call 4 (COMMIT=<sha> OLD_COMMIT=<sha>), the fused step ops reading v from p's columns:
# pytest -m gpu of the whole tree, then the whole-step A/B (exp/gpu/ab_step.sh) of ttt-1b M1 and M2 dual Triton
# at B = 512 against the src before the fusion, and the compiled step's profile of both (launches per step).
set -uo pipefail
cd "$(dirname "$0")/../.."
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
C=${COMMIT:-unknown}
start=$SECONDS
PYTHONPATH=src timeout 230 python3 -m pytest -q -m gpu -W ignore -p no:cacheprovider tests/ > "$OUT/pytest_gpu.txt" 2>&1
tail -3 "$OUT/pytest_gpu.txt"
echo "t=$((SECONDS - start))"
OLD_SRC=exp/gpu/_ab_old/src NEW_COMMIT=$C SKIP_PYTEST=1 BUDGET_S=$((470 - (SECONDS - start))) \
  SPECS="ttt-1b:mlp_2_dual_triton ttt-1b:mlp_1_dual_triton" bash exp/gpu/ab_step.sh
echo "t=$((SECONDS - start))"
left=$((575 - (SECONDS - start)))
[ $left -gt 50 ] && PYTHONPATH=src TTT_DECODE_COMMIT=$C timeout $((left - 5)) python3 -m ttt_decode.cli profile \
  --logdir "$OUT/profile_m2" --model-name ttt-1b --inner_net mlp_2_dual_triton --batch 512 --genlen 16 --use_compile \
  2>&1 | grep -E "^\| |^step" | head -12
rm -rf "$OUT"/profile_m2/.compile-cache "$OUT"/profile_m2/trace_*
echo "t=$((SECONDS - start))"
