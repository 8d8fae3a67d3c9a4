#!/usr/bin/env bash
# Session 17, device calls 2 and 3 (COMMIT=<sha> of the tree sent; no wheels), after session17_call1.sh: the whole
# decode step with the seventeenth session's two changes, each on its own and both, interleaved cell by cell so that
# every variant sees the machine in the same state (prompt 1, 128 tokens, --use_compile, 2 repeats):
#   off    TTT_DECODE_SPLIT_K=0     TTT_DECODE_FUSED_SWIGLU=0   (the code before them)
#   split  TTT_DECODE_SPLIT_K=auto                              (the default now: K-split where split_k.MEASURED says)
#   both   TTT_DECODE_SPLIT_K=auto  TTT_DECODE_FUSED_SWIGLU=1   (the SwiGLU gate_up kernel too: M1 200 launches)
#   call 2 (defaults): ttt-1b M1 at B = 512 (all three) and 256 (off, split), then the compiled M1 step's profile at
#          B = 512 with both (launches, GEMM time against the floor), then `ttt-decode check` at B = 256 with both;
#   call 3: DEFER_AB=1 SPECS="ttt-1b:mlp_2_dual_triton:512:off,split,both mamba-1.4b:mamba_triton:256:off,split" \
#           PROFILE=0 CHECK=0 TAG=call3 COMMIT=<sha> bash exp/gpu/session17_call2.sh
#   DEFER_AB=1 first times the M2 dual kernel per mini-batch position with TTT_DECODE_M2_DEFER_W1=1 and 0
#   (exp/gpu/kernel_sweep.py --recipe defaults at B = 512 and 64): session 17 moved the pending row's load up to the
#   chunk's W1 loads (tiles.load_pending), which put pass A's W2 loads back where the current-state kernel has them
#   (sm_90 SASS); predicted: the deferred kernel's ordinary positions within 1% of the current one's, its last
#   position ~12% faster as on the H100 (mean 1-2% faster).
# Logdirs per variant under $OUT/$TAG (packed into $OUT/$TAG.tgz), table last.
set -uo pipefail
cd "$(dirname "$0")/../.."
export PYTHONUNBUFFERED=1
TAG=${TAG:-call2}
OUT=${OUT:-/tmp/out}; D=$OUT/$TAG; mkdir -p "$D"
C=${COMMIT:?pass COMMIT=<short sha> of the tree sent}
export TTT_DECODE_COMMIT=$C
start=$SECONDS
left() { echo $((570 - (SECONDS - start))); }
nvidia-smi --query-gpu=name,clocks.max.sm,memory.total --format=csv,noheader | tee "$D/gpu.txt"
if [ "${DEFER_AB:-0}" = 1 ]; then
  for defer in 1 0; do
    TTT_DECODE_M2_DEFER_W1=$defer PYTHONPATH=src timeout 110 python3 exp/gpu/kernel_sweep.py --recipe defaults \
      --kernels mlp_2_dual_triton --scan-batches 64 --out "$D/defer$defer" --commit "$C" > "$D/defer${defer}_log.txt" 2>&1
    tail -3 "$D/defer${defer}_log.txt"
  done
fi
cells="--genlens 128 --use_compile --repeats 2"
for spec in ${SPECS:-ttt-1b:mlp_1_dual_triton:512:off,split,both ttt-1b:mlp_1_dual_triton:256:off,split}; do
  IFS=: read -r model inner b variants <<< "$spec"
  for v in ${variants//,/ }; do
    [ "$(left)" -gt 90 ] || { echo "skip $model $inner B=$b $v: time"; continue; }
    sk=auto; sw=0
    [ "$v" = off ] && sk=0
    [ "$v" = both ] && sw=1
    TTT_DECODE_SPLIT_K=$sk TTT_DECODE_FUSED_SWIGLU=$sw PYTHONPATH=src timeout 100 python3 -m ttt_decode.cli sweep \
      --logdir "$D/sweep_$v" --models "$model" --inner-nets "$inner" --batches "$b" $cells 2>&1 | tail -1
  done
done
[ "${PROFILE:-1}" = 1 ] && [ "$(left)" -gt 70 ] && TTT_DECODE_FUSED_SWIGLU=1 PYTHONPATH=src \
  timeout $(( $(left) - 5 )) python3 -m ttt_decode.cli profile --logdir "$D/profile" --model-name ttt-1b \
  --inner_net mlp_1_dual_triton --batch 512 --genlen 16 --use_compile 2>&1 | grep -E "^\| |^step" | head -14
# Model level with both on at B = 256 (down split 4 ways, the SwiGLU kernel): graph vs eager bitwise, compiled vs
# eager and batch vs single within tolerance.
[ "${CHECK:-1}" = 1 ] && [ "$(left)" -gt 60 ] && TTT_DECODE_FUSED_SWIGLU=1 PYTHONPATH=src timeout $(( $(left) - 5 )) \
  python3 -m ttt_decode.cli check --model-name ttt-1b --inner_net mlp_1_dual_triton --batch 256 --steps 20 \
  --checks graph_vs_eager,compiled_vs_eager,batch_vs_single --out "$D/check.jsonl" 2>&1 | tail -4
rm -rf "$D"/*/.compile-cache
python3 - "$D" <<'PY'
import json, os, sys
rows = {}
for v in ("off", "split", "both"):
    p = os.path.join(sys.argv[1], f"sweep_{v}", "results.jsonl")
    for line in open(p) if os.path.exists(p) else []:
        r = json.loads(line)
        if r.get("status", "ok") == "ok" and r.get("decode_tokens_per_s"):
            key = (r["model"], r["inner_net"], r["batch"])
            rows.setdefault(key, {}).setdefault(v, []).append(r["decode_tokens_per_s"])
print("| model | inner net | B | off tok/s | split | both | split/off | both/off |")
for (model, inner, b), d in sorted(rows.items()):
    off, split, both = (round(max(d[v])) if d.get(v) else None for v in ("off", "split", "both"))
    ratio = lambda x: f"{x / off:.3f}" if x and off else "-"  # noqa: E731
    print(f"| {model} | {inner} | {b} | {off or '-'} | {split or '-'} | {both or '-'} | {ratio(split)} | "
          f"{ratio(both)} |")
PY
tar czf "$OUT/$TAG.tgz" -C "$D" . && rm -rf "$D"
echo "t=$((SECONDS - start))"
