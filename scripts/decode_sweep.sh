#!/usr/bin/env bash
# The seed's decode sweep: Mamba-1.4B and TTT-1B (M1 and M2 with the dual-form Triton kernels),
# batch 128..8192, 2048 generated tokens after a 1-token prompt, torch.compile + one CUDA graph per
# step. Each cell runs in its own process (an out-of-memory cell is recorded as oom and the sweep goes
# on); rerunning resumes where it stopped. Ends with a table and a plot in $LOGDIR/report.
#
# Override with environment variables, e.g. a short run:
#   BATCHES="16 64 256" GENLEN=256 LOGDIR=exp/quick bash scripts/decode_sweep.sh
# GPUS="0,1" spreads the cells over two GPUs; BACKEND=ray runs each cell as a Ray task instead, on the
# cluster at RAY_ADDRESS (auto: the one `ray start` began here; unset: a Ray started for the sweep);
# extra arguments go to `ttt-decode sweep` (e.g. --cell-timeout 600).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
LOGDIR=${LOGDIR:-exp/decode_sweep}
BATCHES=${BATCHES:-"128 256 512 1024 2048 4096 8192"}
GENLEN=${GENLEN:-2048}
REPEATS=${REPEATS:-3}
GPUS=${GPUS:-}
BACKEND=${BACKEND:-local}
RAY_ADDRESS=${RAY_ADDRESS:-}
PYTHON=${PYTHON:-python3}

status=0
$PYTHON -m ttt_decode.cli sweep --logdir "$LOGDIR" \
    --models state-spaces/mamba-1.4b,ttt-1b --inner-nets mlp_1_dual_triton,mlp_2_dual_triton \
    --batches "${BATCHES// /,}" --genlens "$GENLEN" --promptlen 1 --mode decode --use_compile \
    --repeats "$REPEATS" ${GPUS:+--gpus "$GPUS"} --backend "$BACKEND" ${RAY_ADDRESS:+--ray-address "$RAY_ADDRESS"} \
    "$@" || status=$?
# Exit 1 (some cells error / timeout / killed) still gets its report; a refused or stopped sweep does not.
if [ "$status" -le 1 ]; then
    $PYTHON -m ttt_decode.cli report "$LOGDIR" --out "$LOGDIR/report"
fi
exit "$status"
