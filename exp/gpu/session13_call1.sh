#!/usr/bin/env bash
# Session 13, device call 1 (COMMIT=<sha>): kernel sweep round 19 (L2 prefetch of the next chunk's tiles in the
# M2 dual kernel) at B = 512 with the best configuration at B = 1024 / 2048, round19_small at B = 64 and 128,
# then Nsight Compute of the default and of the prefetching configuration at positions 0 and 15 (B = 512).
set -uo pipefail
cd "$(dirname "$0")/../.."
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
C=${COMMIT:-unknown}
start=$SECONDS
PYTHONPATH=src timeout 200 python3 exp/gpu/kernel_sweep.py --recipe round19 --commit "$C" --scan-batches 1024,2048 \
  --out "$OUT/sweep" 2>&1 | tail -14
for b in 64 128; do
  PYTHONPATH=src timeout 80 python3 exp/gpu/kernel_sweep.py --recipe round19_small --commit "$C" --batch $b \
    --scan-batches "" --out "$OUT/sweep_small" 2>&1 | tail -7
done
echo "t=$((SECONDS - start))"
R12='"BLOCK_F": 32, "num_warps": 1, "L2_HINTS": true, "REVERSE_B": true, "W2_IN_B": true, "W2_UPD_COLS": 32, "maxnreg": 168, "SPLIT_B": true, "KEEP_W2_LAST": true'
for spec in "default|{$R12}" "pf-a1-b|{$R12, \"PREFETCH_A\": 1, \"PREFETCH_B\": true}"; do
  name=${spec%%|*}; cfg=${spec#*|}
  [ $((SECONDS - start)) -lt 420 ] || break
  PYTHONPATH=src timeout 90 ncu --clock-control none --nvtx --nvtx-include "profile/" --section SpeedOfLight \
    --section Occupancy --section LaunchStats --section WarpStateStats --section MemoryWorkloadAnalysis \
    --section SchedulerStats python3 exp/gpu/ncu_one.py --kernel mlp_2_dual_triton --config "$cfg" --positions 0,15 \
    > "$OUT/ncu_m2_dual_$name.txt" 2>&1
  grep -E "Duration|DRAM Throughput|L2 Hit Rate|Issued Warp|No Eligible|Registers Per" "$OUT/ncu_m2_dual_$name.txt" | head -14
done
echo "t=$((SECONDS - start))"
