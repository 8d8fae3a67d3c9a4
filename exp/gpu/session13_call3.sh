#!/usr/bin/env bash
# Session 13, device call 3 (COMMIT=<sha> of the tree sent): pytest -m gpu of the whole tree, then the whole step
# before (9692f2d's src at exp/gpu/_ab_old/src, sent with the call's carry) and after dual_config picked
# PREFETCH_B: ttt-1b M2 dual Triton at B = 512 and 1024, interleaved (exp/gpu/ab_step.sh); then the kernel
# micro-benchmark of the four TTT kernels at B = 64 .. 2048 (exp/gpu/run.sh micro).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/out}
C=${COMMIT:?pass COMMIT=<short sha> of the tree sent}
start=$SECONDS
OLD_SRC=exp/gpu/_ab_old/src OLD_COMMIT=9692f2d NEW_COMMIT=$C SPECS="ttt-1b:mlp_2_dual_triton" BATCHES=512,1024 \
  SKIP_PROFILE=1 BUDGET_S=400 bash exp/gpu/ab_step.sh
echo "t=$((SECONDS - start))"
COMMIT=$C BATCHES=64,512,1024,2048 timeout $((560 - (SECONDS - start))) bash exp/gpu/run.sh micro
echo "t=$((SECONDS - start))"
