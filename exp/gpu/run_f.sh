#!/usr/bin/env bash
# Device run F (issues 3, 5): with the M2 dual kernel's new default (Z1 scratch), the micro-benchmark
# as scripts/micro.sh runs it (all five variants, one run, one copy bandwidth) and the ttt-1b M2 dual
# rows of the decode sweep again (same flags as runs B-D). Results to $OUT.
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=src TTT_DECODE_COMMIT=${COMMIT:-unknown}
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 ))s] $*"; }
el "micro.sh"
OUT=$OUT/micro.jsonl BATCHES=16,64,256,512,1024 timeout 150 bash scripts/micro.sh --plot-dir "$OUT" > "$OUT/micro_log.txt" 2>&1
tail -8 "$OUT/micro_log.txt"
el "decode sweep: ttt-1b M2 dual"
timeout 400 python3 -m ttt_decode.cli sweep --logdir "$OUT/sweep_m2" --models ttt-1b --inner-nets mlp_2_dual_triton \
  --batches 64,256,512,1024 --genlens 256 --promptlen 1 --mode decode --use_compile --repeats 2 --gpus 0 \
  --cell-timeout 200 2>&1 | tr '\r' '\n' | grep -E "sweep:|ok\]|oom|error|timeout|killed" | tail -5
python3 -m ttt_decode.cli report "$OUT/sweep_m2" --out "$OUT/sweep_m2/report" 2>&1 | tail -1
head -6 "$OUT/sweep_m2/report/report.md"
(cd "$OUT" && tar czf sweep_m2.tgz sweep_m2 && rm -rf sweep_m2)
el "done"
