#!/usr/bin/env bash
# Session 14, device call 1 (COMMIT=<sha> of the tree sent; a1d6aa3's src at exp/gpu/_ab_old/src, sent with the
# call's carry): the M1 Gluon kernel doing qk_prep's work (GLUON_QK).
#   1. its GPU tests and the other Gluon / fused-prologue tests (pytest -m gpu);
#   2. kernels alone (exp/gpu/fused_qk_micro.py --m1-only): qk_prep + Gluon against the Gluon kernel with qk_prep's
#      work, B = 128 .. 2048;
#   3. the whole step before and after, ttt-1b M1 at B = 512 and 1024 interleaved, and the new compiled step's
#      profile (exp/gpu/ab_step.sh).
# Everything under $OUT packed into two .tgz (a call returns a limited number of files).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/out}
C=${COMMIT:?pass COMMIT=<short sha> of the tree sent}
export PYTHONUNBUFFERED=1
start=$SECONDS
mkdir -p "$OUT/k"
PYTHONPATH=src timeout 150 python3 -m pytest -q -m gpu -W ignore -p no:cacheprovider tests/test_ttt_fused_qk.py \
  tests/test_triton_ttt.py -k "fused or gluon" > "$OUT/k/pytest_gpu_fused_qk.txt" 2>&1
tail -2 "$OUT/k/pytest_gpu_fused_qk.txt"
echo "t=$((SECONDS - start))"
PYTHONPATH=src timeout 120 python3 exp/gpu/fused_qk_micro.py --m1-only --batches 128,512,1024,2048 \
  --out "$OUT/k/fused_qk_micro.jsonl" --commit "$C" 2>&1 | grep "^|"
echo "t=$((SECONDS - start))"
tar czf "$OUT/k.tgz" -C "$OUT/k" . && rm -rf "$OUT/k"
OLD_SRC=exp/gpu/_ab_old/src OLD_COMMIT=a1d6aa3 NEW_COMMIT=$C SPECS="ttt-1b:mlp_1_dual_triton" BATCHES=512,1024 \
  SKIP_PYTEST=1 BUDGET_S=$((570 - (SECONDS - start))) bash exp/gpu/ab_step.sh
echo "t=$((SECONDS - start))"
