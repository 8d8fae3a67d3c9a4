#!/usr/bin/env bash
# A/B of the whole decode step in one call: the same sweep cells with the tree's src/ (NEW) and with an older
# commit's src/ unpacked at $OLD_SRC (`git archive <old> src | tar -x -C <dir>`), interleaved model by model
# so that both variants see the machine in the same state; then pytest -m gpu and the compiled step's
# profile of the new code. Everything packed into $OUT/ab.tgz (results.jsonl per variant, logs), table last.
#   OLD_SRC=exp/gpu/_ab_old/src OLD_COMMIT=<sha> NEW_COMMIT=<sha> [SPECS="model:inner_net ..."] [STATE_DTYPE=float16]
#   [TAG=name] [SKIP_PYTEST=1] [SKIP_PROFILE=1] bash exp/gpu/ab_step.sh
# exp/gpu/_ab_old/ is git-ignored (so that it is never committed): send it to the device with the call's
# carry (`carry: ["exp/gpu/_ab_old"]`), and delete it afterwards.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/out}; AB=ab${TAG:+_$TAG}; D=$OUT/$AB; mkdir -p "$D"  # TAG: a second A/B in one call
export PYTHONUNBUFFERED=1
start=$SECONDS; budget=${BUDGET_S:-560}
left() { echo $((budget - (SECONDS - start))); }
if [ "${SKIP_PYTEST:-0}" != 1 ]; then  # SKIP_PYTEST=1: when the same tree's GPU tests ran in an earlier call
  PYTHONPATH=src timeout 200 python3 -m pytest -q -m gpu -W ignore -p no:cacheprovider tests/ > "$D/pytest_gpu.txt" 2>&1
  tail -2 "$D/pytest_gpu.txt"
fi
cells="--batches ${BATCHES:-512} --genlens 128 --use_compile --repeats 2 ${STATE_DTYPE:+--state-dtype $STATE_DTYPE}"
for spec in ${SPECS:-ttt-1b:mlp_1_dual_triton mamba-1.4b:mamba_triton}; do
  for v in old new; do
    src=src; commit=$NEW_COMMIT
    [ $v = old ] && { src=$OLD_SRC; commit=$OLD_COMMIT; }
    [ "$(left)" -gt 60 ] || { echo "skip $spec $v: time"; continue; }
    PYTHONPATH=$src TTT_DECODE_COMMIT=$commit timeout $(( $(left) < 150 ? $(left) : 150 )) python3 -m ttt_decode.cli sweep \
      --logdir "$D/$v" --models "${spec%%:*}" --inner-nets "${spec##*:}" $cells 2>&1 | tail -1
  done
done
[ "${SKIP_PROFILE:-0}" != 1 ] && [ "$(left)" -gt 70 ] && PYTHONPATH=src TTT_DECODE_COMMIT=$NEW_COMMIT timeout $(( $(left) - 10 )) python3 -m ttt_decode.cli profile \
  --logdir "$D/profile" --model-name ttt-1b --inner_net mlp_1_dual_triton --batch 512 --genlen 16 --use_compile 2>&1 \
  | grep -E "^\| |^step" | head -14
rm -rf "$D"/*/.compile-cache
python3 - "$D" <<'PY'
import json, os, sys
rows = {}
for v in ("old", "new"):
    p = os.path.join(sys.argv[1], v, "results.jsonl")
    for line in open(p) if os.path.exists(p) else []:
        r = json.loads(line)
        rows.setdefault((r["model"], r.get("inner_net"), r["batch"]), {})[v] = r
print("| model | B | old tok/s | new tok/s | new / old | old step ms | new step ms |")
for (m, n, b), d in sorted(rows.items()):
    o, w = (d.get(k, {}) for k in ("old", "new"))
    to, tw = o.get("decode_tokens_per_s"), w.get("decode_tokens_per_s")
    so, sw = ((x.get("step_ms") or {}).get("median") for x in (o, w))
    f = lambda x, p=0: f"{x:.{p}f}" if x else "-"  # noqa: E731
    print(f"| {m} {n} | {b} | {f(to)} | {f(tw)} | {f(tw / to if to and tw else None, 3)} | {f(so, 3)} | {f(sw, 3)} |")
PY
tar czf "$OUT/$AB.tgz" -C "$D" . && rm -rf "$D"
