#!/usr/bin/env bash
# Session 13, device call 7 (COMMIT=<sha> of the tree sent): Nsight Compute of the final M2 dual default
# (dual_config at B = 512: PREFETCH_B 2) at positions 0 and 15, and `ttt-decode check` of ttt-1b M2 dual Triton at
# B = 128 (graph vs eager, fp16 vs float32 over 64 teacher-forced steps). Outputs packed into $OUT/call7.tgz.
set -uo pipefail
cd "$(dirname "$0")/../.."
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; D=$OUT/call7; mkdir -p "$D"
C=${COMMIT:?pass COMMIT=<short sha> of the tree sent}
PYTHONPATH=src timeout 90 ncu --clock-control none --nvtx --nvtx-include "profile/" --section SpeedOfLight \
  --section Occupancy --section LaunchStats --section WarpStateStats --section MemoryWorkloadAnalysis \
  --section SchedulerStats python3 exp/gpu/ncu_one.py --kernel mlp_2_dual_triton --positions 0,15 \
  > "$D/ncu_m2_dual_final.txt" 2>&1
grep -E "Duration|DRAM Throughput|L2 Hit Rate|Issued Warp|No Eligible|Registers Per" "$D/ncu_m2_dual_final.txt" | head -12
PYTHONPATH=src TTT_DECODE_COMMIT=$C timeout 150 python3 -m ttt_decode.cli check --model-name ttt-1b \
  --inner_net mlp_2_dual_triton --batch 128 --steps 64 --checks graph_vs_eager,fidelity --out "$D/check.jsonl" 2>&1 | tail -4
tar czf "$OUT/call7.tgz" -C "$D" . && rm -rf "$D"
