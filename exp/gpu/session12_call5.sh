#!/usr/bin/env bash
# Session 12, device call 5 (COMMIT=<sha>): the whole model with the committed default (the capped M2 dual kernel
# with KEEP_W2_LAST, which had no step-level run of its own): one sweep of ttt-1b M2 and M1 dual Triton at
# B = 512 and 1024, --use_compile, prompt 1, 128 tokens, 2 repeats.
set -uo pipefail
cd "$(dirname "$0")/../.."
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
PYTHONPATH=src TTT_DECODE_COMMIT=${COMMIT:-unknown} timeout 480 python3 -m ttt_decode.cli sweep --logdir "$OUT/sweep" \
  --models ttt-1b --inner-nets mlp_2_dual_triton,mlp_1_dual_triton --batches 512,1024 --genlens 128 --use_compile \
  --repeats 2 2>&1 | tail -8
rm -rf "$OUT"/sweep/.compile-cache
python3 - "$OUT/sweep/results.jsonl" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    print(r["model"], r.get("inner_net"), r["batch"], r.get("status"), r.get("decode_tokens_per_s"),
          (r.get("step_ms") or {}).get("median"), r.get("cold_start_s"))
PY
