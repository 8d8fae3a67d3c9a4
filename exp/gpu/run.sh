#!/usr/bin/env bash
# One entry point for the evidence runs on the GPU machine; each recipe writes under $OUT and prints a
# short table last. Results are copied by hand into exp/results/<gpu>/ with the command and commit.
#   bash exp/gpu/run.sh kernels      # launch-configuration sweep of the TTT kernels + Nsight Compute
set -uo pipefail
cd "$(dirname "$0")/../.."
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
COMMIT=${COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
recipe=${1:-}; shift || true

ncu_sections="--section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
--section MemoryWorkloadAnalysis --section SchedulerStats"

ncu_kernel() {  # name kernel config-json positions
  timeout 90 ncu --clock-control none --nvtx --nvtx-include "profile/" $ncu_sections \
    python3 exp/gpu/ncu_one.py --kernel "$2" --config "$3" --positions "$4" > "$OUT/ncu_$1.txt" 2>&1
  grep -E "^  [a-z_0-9]+.*\(|Duration|DRAM Throughput|Achieved Occupancy|Theoretical Occupancy|Registers Per|Local Memory Spill|Block Limit" \
    "$OUT/ncu_$1.txt" | head -60
}

case "$recipe" in
  kernels)
    timeout 390 python3 exp/gpu/kernel_sweep.py --recipe ${RECIPE:-round4} --out "$OUT" --commit "$COMMIT" "$@" 2>&1 | tee "$OUT/kernel_sweep_log.txt"
    best() { python3 -c "import json; print(json.dumps(json.load(open('$OUT/best_configs.json'))['$1']))" 2>/dev/null; }
    [ "${NCU_BASELINE:-1}" = 1 ] && ncu_kernel m2_dual_default mlp_2_dual_triton '{"BLOCK_F": 64, "num_warps": 2}' 0,15
    b=$(best mlp_2_dual_triton); [ -n "$b" ] && ncu_kernel m2_dual_best mlp_2_dual_triton "$b" 0,15
    b=$(best mlp_2_primal_triton); [ -n "$b" ] && ncu_kernel m2_primal_best mlp_2_primal_triton "$b" 0,15
    ;;
  *) echo "usage: bash exp/gpu/run.sh kernels" >&2; exit 2 ;;
esac
