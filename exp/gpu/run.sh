#!/usr/bin/env bash
# One entry point for the evidence runs on the GPU machine; each recipe writes under $OUT and prints a
# short table last. Results are copied by hand into exp/results/<gpu>/ with the command and commit.
#   bash exp/gpu/run.sh kernels      # launch-configuration sweep of the TTT kernels + Nsight Compute
set -uo pipefail
cd "$(dirname "$0")/../.."
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
# The device's copy of the tree may carry stale git metadata: pass COMMIT from the machine the run is sent from.
COMMIT=${COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
export TTT_DECODE_COMMIT=$COMMIT
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
  final-kernels)  # GPU tests, micro-benchmark records, per-position times, model-level checks -> one archive
    F=/tmp/final_kernels; mkdir -p "$F"
    timeout 240 python3 -m pytest -q -m gpu -W ignore -p no:cacheprovider tests/ > "$F/pytest_gpu.txt" 2>&1
    tail -4 "$F/pytest_gpu.txt"
    OUT=$F/micro.jsonl BATCHES=${BATCHES:-64,256,512,1024,2048} \
      KERNELS=mlp_2_dual_triton,mlp_2_primal_triton,mlp_1_dual_triton,mlp_1_primal_triton \
      timeout 150 bash scripts/micro.sh --plot-dir "$F" --commit "$COMMIT" > "$F/micro_log.txt" 2>&1
    tail -12 "$F/micro_log.txt"
    timeout 90 python3 exp/gpu/kernel_sweep.py --recipe defaults --out "$F" --commit "$COMMIT" --scan-batches "" \
      > "$F/positions_log.txt" 2>&1; tail -6 "$F/positions_log.txt"
    for net in mlp_2_dual_triton mlp_1_dual_triton; do
      timeout 100 python3 -m ttt_decode.cli check --model-name ttt-1b --inner_net $net --batch 16 --steps 64 \
        --checks graph_vs_eager,fidelity --out "$F/check.jsonl" 2>&1 | tail -3
    done
    tar czf "$OUT/final_kernels.tgz" -C "$F" .
    ;;
  final-models)  # whole-model decode sweep of ttt-1b M2/M1 (compiled, CUDA graphs) + report -> one archive
    F=/tmp/final_models; mkdir -p "$F"
    timeout ${SWEEP_TIMEOUT:-470} python3 -m ttt_decode.cli sweep --logdir "$F/sweep" --models ttt-1b \
      --inner-nets mlp_2_dual_triton,mlp_1_dual_triton --batches ${BATCHES:-512,1024} --genlens ${GENLEN:-128} \
      --use_compile --repeats 2 2>&1 | tail -8
    python3 -m ttt_decode.cli report "$F/sweep" --out "$F/sweep/report" 2>&1 | tail -12
    tar czf "$OUT/final_models.tgz" -C "$F" .
    ;;
  *) echo "usage: bash exp/gpu/run.sh kernels|final-kernels|final-models" >&2; exit 2 ;;
esac
