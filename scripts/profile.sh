#!/usr/bin/env bash
# The seed's profile: ttt-profile (ttt-1b geometry, 4 layers), batch 32, 4 eager decode steps under
# torch.profiler. Writes a Chrome-trace .json (open it in ui.perfetto.dev) and a step-time breakdown
# by stage (breakdown_*.md / .json) into $LOGDIR, and appends the cell's record to results.jsonl.
#   INNER_NET=mlp_2_dual_triton LOGDIR=exp/M2_profile_triton bash scripts/profile.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
$PYTHON benchmark_prefill_decode.py --logdir "${LOGDIR:-exp/M2_profile}" --model-name ttt-profile --mode decode \
    --batch 32 --promptlen 1 --genlen 4 --inner_net "${INNER_NET:-mlp_2_dual}" --no_cg --profile
