#!/usr/bin/env bash
# Session 17, device call 2 (COMMIT=<sha> of the tree sent; no wheels), after session17_call1.sh: the whole ttt-1b step
# with the seventeenth session's two changes, each switched on its own and both, interleaved cell by cell so that
# every variant sees the machine in the same state (prompt 1, 128 tokens, --use_compile, 2 repeats):
#   off    TTT_DECODE_SPLIT_K=0  TTT_DECODE_FUSED_SWIGLU=0    (the code before them)
#   split  TTT_DECODE_SPLIT_K=auto                           (the default now: down split at B = 256 and 512)
#   both   TTT_DECODE_SPLIT_K=auto TTT_DECODE_FUSED_SWIGLU=1   (the SwiGLU gate_up kernel too: M1 200 launches a step)
# M1 dual Triton at B = 256 and 512, M2 at 512; then the compiled M1 step's profile at B = 512 with both (launches,
# GEMM time against the floor). Logdirs per variant under $OUT/call2 (packed into $OUT/call2.tgz), table last.
set -uo pipefail
cd "$(dirname "$0")/../.."
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; D=$OUT/call2; mkdir -p "$D"
C=${COMMIT:?pass COMMIT=<short sha> of the tree sent}
export TTT_DECODE_COMMIT=$C
start=$SECONDS
left() { echo $((570 - (SECONDS - start))); }
nvidia-smi --query-gpu=name,clocks.max.sm,memory.total --format=csv,noheader | tee "$D/gpu.txt"
cells="--genlens 128 --use_compile --repeats 2"
for spec in mlp_1_dual_triton:512 mlp_1_dual_triton:256 mlp_2_dual_triton:512; do
  inner=${spec%%:*}; b=${spec##*:}
  for v in off split both; do
    [ "$(left)" -gt 100 ] || { echo "skip $inner B=$b $v: time"; continue; }
    sk=auto; sw=0
    [ $v = off ] && sk=0
    [ $v = both ] && sw=1
    TTT_DECODE_SPLIT_K=$sk TTT_DECODE_FUSED_SWIGLU=$sw PYTHONPATH=src timeout 100 python3 -m ttt_decode.cli sweep \
      --logdir "$D/sweep_$v" --models ttt-1b --inner-nets "$inner" --batches "$b" $cells 2>&1 | tail -1
  done
done
[ "$(left)" -gt 70 ] && TTT_DECODE_FUSED_SWIGLU=1 PYTHONPATH=src timeout $(( $(left) - 5 )) python3 -m ttt_decode.cli \
  profile --logdir "$D/profile" --model-name ttt-1b --inner_net mlp_1_dual_triton --batch 512 --genlen 16 \
  --use_compile 2>&1 | grep -E "^\| |^step" | head -14
rm -rf "$D"/*/.compile-cache
python3 - "$D" <<'PY'
import json, os, sys
rows = {}
for v in ("off", "split", "both"):
    p = os.path.join(sys.argv[1], f"sweep_{v}", "results.jsonl")
    for line in open(p) if os.path.exists(p) else []:
        r = json.loads(line)
        if r.get("status", "ok") == "ok" and r.get("decode_tokens_per_s"):
            rows.setdefault((r["inner_net"], r["batch"]), {}).setdefault(v, []).append(r["decode_tokens_per_s"])
print("| inner net | B | off tok/s | split | both | split/off | both/off |")
for (inner, b), d in sorted(rows.items()):
    off, split, both = (round(max(d[v])) if d.get(v) else None for v in ("off", "split", "both"))
    ratio = lambda x: f"{x / off:.3f}" if x and off else "-"  # noqa: E731
    print(f"| {inner} | {b} | {off or '-'} | {split or '-'} | {both or '-'} | {ratio(split)} | {ratio(both)} |")
PY
tar czf "$OUT/call2.tgz" -C "$D" . && rm -rf "$D"
echo "t=$((SECONDS - start))"
