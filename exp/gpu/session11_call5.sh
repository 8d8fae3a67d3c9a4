#!/usr/bin/env bash
# Session 11, device call 5 (COMMIT=<sha>): Nsight Compute of the M2 dual kernel at B = 512, positions 0 and 15, the
# round-9 configuration (251 registers, 8 programs a multiprocessor) against the capped one (168, 12 programs).
set -uo pipefail
cd "$(dirname "$0")/../.."
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
R9='{"BLOCK_F": 32, "num_warps": 1, "L2_HINTS": true, "REVERSE_B": true, "W2_IN_B": true}'
CAP='{"BLOCK_F": 32, "num_warps": 1, "L2_HINTS": true, "REVERSE_B": true, "W2_IN_B": true, "W2_UPD_COLS": 32, "maxnreg": 168, "SPLIT_B": true}'
for v in r9 cap; do
  cfg=$R9; [ $v = cap ] && cfg=$CAP
  timeout 120 ncu --clock-control none --nvtx --nvtx-include "profile/" --section SpeedOfLight --section Occupancy \
    --section LaunchStats --section WarpStateStats --section MemoryWorkloadAnalysis --section SchedulerStats \
    python3 exp/gpu/ncu_one.py --kernel mlp_2_dual_triton --config "$cfg" --positions 0,15 > "$OUT/ncu_m2_dual_$v.txt" 2>&1
  echo "== $v"
  grep -E "Duration|DRAM Throughput|Achieved Occupancy|Theoretical Occupancy|Registers Per|L2 Hit Rate|No Eligible|Issued Warp" \
    "$OUT/ncu_m2_dual_$v.txt" | head -24
done
