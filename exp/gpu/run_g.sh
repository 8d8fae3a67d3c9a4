#!/usr/bin/env bash
# Device run G (issue 5): the one cell of run F's M2 sweep that its time limit cut (B=1024), resumed
# from the carried logdir exp/sweep_m2_h100, then the report.
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=src TTT_DECODE_COMMIT=${COMMIT:-unknown}
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
timeout 280 python3 -m ttt_decode.cli sweep --logdir exp/sweep_m2_h100 --models ttt-1b --inner-nets mlp_2_dual_triton \
  --batches 64,256,512,1024 --genlens 256 --promptlen 1 --mode decode --use_compile --repeats 2 --gpus 0 \
  --cell-timeout 250 2>&1 | tr '\r' '\n' | grep -E "sweep:|ok\]|oom|error|timeout|killed" | tail -3
python3 -m ttt_decode.cli report exp/sweep_m2_h100 --out exp/sweep_m2_h100/report 2>&1 | tail -1
head -6 exp/sweep_m2_h100/report/report.md
tar czf "$OUT/sweep_m2.tgz" exp/sweep_m2_h100
