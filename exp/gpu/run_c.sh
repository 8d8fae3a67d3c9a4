#!/usr/bin/env bash
# Device run C (issues 5, 9): resume the decode sweep of run B (its logdir carried in as
# exp/sweep_h100), on GPU 0 through the sweep's --gpus mode, then the report. Results to $OUT.
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=src TTT_DECODE_COMMIT=${COMMIT:-unknown}
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 ))s] $*"; }
cp exp/sweep_h100/results.jsonl "$OUT/results_before.jsonl"
el "decode sweep (resume, --gpus 0)"
LOGDIR=exp/sweep_h100 GPUS=0 BATCHES="${SWEEP_BATCHES:-64 256 1024}" GENLEN=256 REPEATS=2 timeout ${SWEEP_S:-540} \
  bash scripts/decode_sweep.sh --cell-timeout 200 2>&1 | tr '\r' '\n' | grep -E "sweep:|ok\]|oom|error|timeout|killed|^\||report|wrote" | tail -30
python3 -m ttt_decode.cli report exp/sweep_h100 --out exp/sweep_h100/report 2>&1 | tail -3
(tar czf "$OUT/sweep.tgz" exp/sweep_h100)
el "done"
