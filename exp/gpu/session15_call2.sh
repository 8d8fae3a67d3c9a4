#!/usr/bin/env bash
# Session 15's second device call, not run in session 15 (no machine was lent): after session15_call1.sh
# (COMMIT=<sha> of the tree sent; no wheels). About 8 minutes.
#   1. The whole ttt-1b M2 step with the deferred W1 term (TTT_DECODE_M2_DEFER_W1=1, the default when this was written; off since) and without
#      (=0, the kernel as at eec92ce), interleaved cell by cell on one machine: B = 512 and 1024, prompt 1,
#      128 tokens, --use_compile (issue 13's 34 k tokens/s at B = 512). Each variant in its own sweep folder;
#      the records name the switch (provenance `ttt_decode_env`).
#   2. `ttt-decode check` of ttt-1b M2 at B = 128, 64 steps (four mini-batch ends: graph vs eager bitwise, fp16 vs
#      a float32 reference, compiled vs eager, batch vs single) with the default.
#   3. The compiled M2 step's profile at B = 512 (the inner kernel's share, launches).
# Everything under $OUT/call2, packed into $OUT/call2.tgz; a table last.
set -uo pipefail
cd "$(dirname "$0")/../.."
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; D=$OUT/call2; mkdir -p "$D"
C=${COMMIT:?pass COMMIT=<short sha> of the tree sent}
export TTT_DECODE_COMMIT=$C PYTHONPATH=src
TTD="python3 -m ttt_decode.cli"
start=$SECONDS
for b in 512 1024; do
  for defer in 1 0; do
    TTT_DECODE_M2_DEFER_W1=$defer timeout 110 $TTD sweep --logdir "$D/defer$defer" --models ttt-1b \
      --inner-nets mlp_2_dual_triton --batches $b --genlens 128 --use_compile --repeats 2 2>&1 | tail -1
  done
done
echo "t=$((SECONDS - start))"
timeout 150 $TTD check --model-name ttt-1b --inner_net mlp_2_dual_triton --batch 128 --steps 64 \
  --checks graph_vs_eager,compiled_vs_eager,fidelity,batch_vs_single --out "$D/check.jsonl" 2>&1 | tail -6
echo "t=$((SECONDS - start))"
[ $((SECONDS - start)) -lt 440 ] && timeout $((560 - (SECONDS - start))) $TTD profile --logdir "$D/profile" \
  --model-name ttt-1b --inner_net mlp_2_dual_triton --batch 512 --genlen 16 --use_compile 2>&1 | grep -E "^\| |^step" | head -8
rm -rf "$D"/*/.compile-cache
python3 - "$D" <<'PY'
import json, os, sys
rows = {}
for v in ("defer1", "defer0"):
    p = os.path.join(sys.argv[1], v, "results.jsonl")
    for line in open(p) if os.path.exists(p) else []:
        r = json.loads(line)
        rows.setdefault(r["batch"], {})[v] = r
print("| B | deferred W1 tok/s | current-state tok/s | ratio | step ms (deferred / current) |")
for b, d in sorted(rows.items()):
    n, o = d.get("defer1", {}), d.get("defer0", {})
    tn, to = n.get("decode_tokens_per_s"), o.get("decode_tokens_per_s")
    sn, so = ((x.get("step_ms") or {}).get("median") for x in (n, o))
    f = lambda x, p=0: f"{x:.{p}f}" if x else "-"  # noqa: E731
    print(f"| {b} | {f(tn)} | {f(to)} | {f(tn / to if tn and to else None, 3)} | {f(sn, 3)} / {f(so, 3)} |")
PY
tar czf "$OUT/call2.tgz" -C "$D" . && rm -rf "$D"
