#!/usr/bin/env bash
# Device run D (issue 5): the decode sweep extended to B=512 (and its one missing cell), then the
# seed-style cell for the primal-form M2 kernel at B=256 (the dual form's model-level baseline), then
# the report. The logdir of runs B and C is carried in as exp/sweep_h100.
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=src TTT_DECODE_COMMIT=${COMMIT:-unknown}
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 ))s] $*"; }
el "decode sweep (resume, B=512 added)"
LOGDIR=exp/sweep_h100 GPUS=0 BATCHES="64 256 512 1024" GENLEN=256 REPEATS=2 timeout 400 \
  bash scripts/decode_sweep.sh --cell-timeout 200 2>&1 | tr '\r' '\n' | grep -E "sweep:|ok\]|oom|error|timeout|killed" | tail -8
el "seed-style cell: M2 primal Triton, B=256"
timeout 150 python3 benchmark_prefill_decode.py --logdir exp/sweep_h100 --model-name ttt-1b --mode decode --batch 256 \
  --promptlen 1 --genlen 256 --inner_net mlp_2_primal_triton --use_compile --repeats 2 2>&1 | tail -2
python3 -m ttt_decode.cli report exp/sweep_h100 --out exp/sweep_h100/report 2>&1 | tail -2
head -8 exp/sweep_h100/report/report.md
(tar czf "$OUT/sweep.tgz" exp/sweep_h100)
el "done"
