#!/usr/bin/env bash
# Device run E (issue 3): the M2 dual kernel with pass A's Z1 kept in a float32 scratch (Z1_SCRATCH) so
# pass B walks only W2 and the cache rows, against the current default; positions; the fastest at
# every batch of the micro-benchmark; then M2 dual/primal micro rows again with the same copy bandwidth.
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=src TTT_DECODE_COMMIT=${COMMIT:-unknown}
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 ))s] $*"; }
el "M2 dual: Z1 scratch"
timeout 300 python3 exp/gpu/m2_dual_extra.py --out "$OUT/m2_dual_runE.jsonl" --batches 16,64,256,512,1024 --configs '[
 {}, {"Z1_SCRATCH": true}, {"Z1_SCRATCH": true, "num_warps": 4}, {"Z1_SCRATCH": true, "BLOCK_F": 32},
 {"Z1_SCRATCH": true, "BLOCK_F": 128, "num_warps": 4}, {"Z1_SCRATCH": true, "UPDATE_DOT": false},
 {"Z1_SCRATCH": true, "BLOCK_F": 32, "num_warps": 1}]' 2>&1 | tail -20
el "done"
