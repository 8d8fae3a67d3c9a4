#!/usr/bin/env bash
# Device run B (issues 3, 5): calibration, the kernel micro-benchmark as scripts/micro.sh runs it, the
# M2 dual kernel's remaining configurations and per-position cost, then the seed's decode sweep cut to
# fit (batch 64, 256, 1024; 256 generated tokens). Everything lands in $OUT.
#   COMMIT=$(git rev-parse --short HEAD) bash exp/gpu/run_b.sh
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=src TTT_DECODE_COMMIT=${COMMIT:-unknown}
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 ))s] $*"; }
el "calibrate"
timeout 60 python3 -m ttt_decode.cli calibrate --out "$OUT/calibration.json" 2>&1 | tail -2
el "micro.sh"
OUT=$OUT/micro.jsonl BATCHES=16,64,256,512,1024 timeout 200 bash scripts/micro.sh --plot-dir "$OUT" > "$OUT/micro_log.txt" 2>&1
tail -9 "$OUT/micro_log.txt"
el "M2 dual extra configurations"
timeout 90 python3 exp/gpu/m2_dual_extra.py --out "$OUT/m2_dual_extra.jsonl" 2>&1 | tail -10
el "decode sweep"
LOGDIR=$OUT/sweep BATCHES="${SWEEP_BATCHES:-64 256 1024}" GENLEN=256 REPEATS=2 timeout ${SWEEP_S:-280} \
  bash scripts/decode_sweep.sh --cell-timeout 200 2>&1 | grep -v "^\s*$" | tail -25
(cd "$OUT" && tar czf sweep.tgz sweep && rm -rf sweep)
el "done"
