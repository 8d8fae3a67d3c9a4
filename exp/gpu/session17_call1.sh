#!/usr/bin/env bash
# Session 17, device call 1 (COMMIT=<sha> of the tree sent, evaluated on the local machine; no wheels), for the first
# session that is lent a GPU after it (session 17 had none):
#   1. GPU tests of what no GPU has run yet: the post-norm as the dispatchers choose it (session 16's final
#      dispatch) and the block's first kernel taking the down projection's K-split partials (session 17);
#   2. the K-split GEMM micro-benchmark on this GPU (exp/gpu/splitk_gemm.py; the table in ops/split_k.py is the
#      H100's);
#   3. the whole step, A/B of TTT_DECODE_SPLIT_K=0 against the default (auto: down split 4 ways at B = 256, 2 at
#      B = 512), interleaved cell by cell in two logdirs: ttt-1b M1 and M2 dual Triton, prompt 1, --use_compile;
#   4. the compiled M1 step's profile at B = 512 with the default (GEMM time against the floor, launches).
# Everything under $OUT/call1 (packed into $OUT/call1.tgz), the A/B table last.
set -uo pipefail
cd "$(dirname "$0")/../.."
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; D=$OUT/call1; mkdir -p "$D"
C=${COMMIT:?pass COMMIT=<short sha> of the tree sent}
export TTT_DECODE_COMMIT=$C
start=$SECONDS
left() { echo $((570 - (SECONDS - start))); }
nvidia-smi --query-gpu=name,clocks.max.sm,memory.total --format=csv,noheader | tee "$D/gpu.txt"
PYTHONPATH=src timeout 150 python3 -m pytest -q -m gpu -W ignore -p no:cacheprovider tests/test_ttt_fused_qk.py \
  tests/test_ttt_block.py -k "gpu_fused_qk_gate_norm or gpu_pre_conv" > "$D/pytest_gpu.txt" 2>&1
tail -1 "$D/pytest_gpu.txt"
PYTHONPATH=src timeout 90 python3 exp/gpu/splitk_gemm.py --out "$D" --commit "$C" --batches 256,512,1024 \
  --splits 2,4 > "$D/splitk_log.txt" 2>&1
grep -E "^matmul|^\| shape|ttt.down" "$D/splitk_log.txt" | head -12
cells="--genlens 128 --use_compile --repeats 2"
for spec in ttt-1b:mlp_1_dual_triton:256,512 ttt-1b:mlp_2_dual_triton:512; do
  IFS=: read -r model inner batches <<< "$spec"
  for b in ${batches//,/ }; do
    for v in off auto; do
      [ "$(left)" -gt 90 ] || { echo "skip $inner B=$b $v: time"; continue; }
      TTT_DECODE_SPLIT_K=$([ $v = off ] && echo 0 || echo auto) PYTHONPATH=src timeout 100 python3 -m ttt_decode.cli \
        sweep --logdir "$D/sweep_$v" --models "$model" --inner-nets "$inner" --batches "$b" $cells 2>&1 | tail -1
    done
  done
done
[ "$(left)" -gt 80 ] && PYTHONPATH=src timeout $(( $(left) - 10 )) python3 -m ttt_decode.cli profile \
  --logdir "$D/profile" --model-name ttt-1b --inner_net mlp_1_dual_triton --batch 512 --genlen 16 --use_compile 2>&1 \
  | grep -E "^\| |^step" | head -14
rm -rf "$D"/*/.compile-cache
python3 - "$D" <<'PY'
import json, os, sys
rows = {}
for v in ("off", "auto"):
    p = os.path.join(sys.argv[1], f"sweep_{v}", "results.jsonl")
    for line in open(p) if os.path.exists(p) else []:
        r = json.loads(line)
        if r.get("status", "ok") == "ok" and r.get("decode_tokens_per_s"):
            rows.setdefault((r["inner_net"], r["batch"]), {}).setdefault(v, []).append(r["decode_tokens_per_s"])
print("| inner net | B | split off tok/s | auto tok/s | auto/off |")
for (inner, b), d in sorted(rows.items()):
    off, auto = (round(max(d[v])) if d.get(v) else None for v in ("off", "auto"))
    ratio = f"{auto / off:.3f}" if off and auto else "-"
    print(f"| {inner} | {b} | {off or '-'} | {auto or '-'} | {ratio} |")
PY
tar czf "$OUT/call1.tgz" -C "$D" . && rm -rf "$D"
echo "t=$((SECONDS - start))"
