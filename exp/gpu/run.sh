#!/usr/bin/env bash
# The evidence runs on the GPU machine, by recipe. Each recipe writes its files under $OUT/<recipe>/,
# packs them into $OUT/<recipe>.tgz at the end (the device returns few files; a call cut off by its time
# limit before the packing still returns what is under $OUT/<recipe>/) and prints a short table last. The
# results are copied into exp/results/<gpu>/ named <what>_<gpu>_<commit>, listed in that folder's README.
#
#   bash exp/gpu/run.sh kernels        # launch-configuration sweep of the TTT kernels + Nsight Compute
#   bash exp/gpu/run.sh micro          # scripts/micro.sh: the four TTT kernels at their defaults, B 64..2048
#   bash exp/gpu/run.sh positions      # the defaults at B=512 by mini-batch position, compiled resources
#   bash exp/gpu/run.sh check          # pytest -m gpu, then `ttt-decode check` on ttt-1b M1/M2 (graph, compile, fidelity)
#   bash exp/gpu/run.sh sweep          # ttt-decode sweep of MODELS x INNER_NETS x BATCHES (+ report)
#   bash exp/gpu/run.sh profile        # the compiled step's kernels by group (`profile --use_compile`)
#   bash exp/gpu/run.sh fidelity       # state_fidelity: fp16 / bf16 state against fp32, 512 steps
#   bash exp/gpu/run.sh step           # check + sweep + profile + fidelity in one call
#   STUDY=batch bash exp/gpu/run.sh study    # the H200 study (issue 17): the seed's sweep over batch sizes
#   STUDY=context bash exp/gpu/run.sh study  # ... and the step time against context (llama-1.3b vs recurrent)
#   bash exp/gpu/run.sh attention      # decode attention launch configurations (one-pass vs split) at llama-1.3b
#                                      # shapes, B 16/64 x context 1k-32k (exp/gpu/attention_sweep.py)
#   bash exp/gpu/run.sh prefill        # pytest -m gpu of the TTT prefill graphs, then where prefill time goes
#   bash exp/gpu/run.sh ray            # the same sweep with the local and the Ray backend (needs the wheels of
#                                      # exp/gpu/ray_wheels.sh installed first), tokens/s side by side
# Beside these, exp/gpu/ab_step.sh times the same sweep cells with the tree's src/ and an older commit's src/
# in one call (before/after of a change in the decode step).
# Pass COMMIT=<short sha> from the machine the run is sent from (the device's copy of the tree may carry
# stale git metadata).
set -uo pipefail
cd "$(dirname "$0")/../.."
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
COMMIT=${COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
export TTT_DECODE_COMMIT=$COMMIT
TTD="python3 -m ttt_decode.cli"

ncu_kernel() {  # dir name kernel config-json positions
  timeout 90 ncu --clock-control none --nvtx --nvtx-include "profile/" --section SpeedOfLight --section Occupancy \
    --section LaunchStats --section WarpStateStats --section MemoryWorkloadAnalysis --section SchedulerStats \
    python3 exp/gpu/ncu_one.py --kernel "$3" --config "$4" --positions "$5" > "$1/ncu_$2.txt" 2>&1
  grep -E "^  [a-z_0-9]+.*\(|Duration|DRAM Throughput|Achieved Occupancy|Registers Per|L2 Hit Rate" "$1/ncu_$2.txt" | head -30
}

recipe_kernels() {
  timeout 390 python3 exp/gpu/kernel_sweep.py --recipe "${RECIPE:-round4}" --out "$1" --commit "$COMMIT" "${@:2}" \
    2>&1 | tee "$1/kernel_sweep_log.txt" | tail -40
  best() { python3 -c "import json; print(json.dumps(json.load(open('$1/best_configs.json'))['$2']))" 2>/dev/null; }
  b=$(best "$1" mlp_2_dual_triton); [ -n "$b" ] && ncu_kernel "$1" m2_dual_best mlp_2_dual_triton "$b" 0,15
  b=$(best "$1" mlp_2_primal_triton); [ -n "$b" ] && ncu_kernel "$1" m2_primal_best mlp_2_primal_triton "$b" 0,15
}

recipe_micro() {
  OUT=$1/micro.jsonl BATCHES=${BATCHES:-64,256,512,1024,2048} \
    KERNELS=mlp_2_dual_triton,mlp_2_primal_triton,mlp_1_dual_triton,mlp_1_primal_triton \
    timeout 150 bash scripts/micro.sh --plot-dir "$1" --commit "$COMMIT" > "$1/micro_log.txt" 2>&1
  tail -8 "$1/micro_log.txt"
}

recipe_positions() {
  timeout 90 python3 exp/gpu/kernel_sweep.py --recipe defaults --out "$1" --commit "$COMMIT" --scan-batches "" \
    > "$1/positions_log.txt" 2>&1
  tail -6 "$1/positions_log.txt"
}

recipe_check() {
  timeout 200 python3 -m pytest -q -m gpu -W ignore -p no:cacheprovider tests/ > "$1/pytest_gpu.txt" 2>&1
  tail -4 "$1/pytest_gpu.txt"
  for net in mlp_2_dual_triton mlp_1_dual_triton; do
    timeout 120 $TTD check --model-name ttt-1b --inner_net $net --batch 16 --steps 64 \
      --checks graph_vs_eager,compiled_vs_eager,fidelity --out "$1/check.jsonl" 2>&1 | tail -4
  done
}

recipe_sweep() {
  timeout "${SWEEP_TIMEOUT:-470}" $TTD sweep --logdir "$1/sweep" --models "${MODELS:-ttt-1b}" \
    --inner-nets "${INNER_NETS:-mlp_2_dual_triton,mlp_1_dual_triton}" --batches "${BATCHES:-512,1024}" \
    --genlens "${GENLEN:-128}" ${STATE_DTYPE:+--state-dtype $STATE_DTYPE} --use_compile --repeats 2 2>&1 | tail -4
  $TTD report "$1/sweep" --out "$1/sweep/report" 2>&1 | tail -12
}

recipe_profile() {
  local dir=$1
  IFS=';' read -ra specs <<< "${PROFILES:-ttt-1b mlp_1_dual_triton;ttt-1b mlp_2_dual_triton}"
  for spec in "${specs[@]}"; do
    set -- "$dir" $spec
    timeout 150 $TTD profile --logdir "$1/profile" --model-name "$2" --inner_net "$3" --batch "${PROFILE_BATCH:-512}" \
      --genlen 16 --use_compile 2>&1 | grep -E "^\| |^step" | head -12
  done
}

recipe_fidelity() {
  local dir=$1
  IFS=';' read -ra specs <<< "${FIDELITY:-mamba-1.4b mamba_triton float16;mamba-1.4b mamba_triton bfloat16;ttt-1b mlp_2_dual_triton float16}"
  for spec in "${specs[@]}"; do
    set -- "$dir" $spec
    timeout 150 $TTD check --model-name "$2" --inner_net "$3" --state-dtype "$4" --batch 16 \
      --steps "${FIDELITY_STEPS:-512}" --checks state_fidelity --out "$1/fidelity.jsonl" 2>&1 | tail -2
  done
}

recipe_attention() {
  timeout 420 python3 exp/gpu/attention_sweep.py --out "$1/attention.jsonl" --commit "$COMMIT" 2>&1 \
    | tee "$1/attention_log.txt" | tail -12
}

recipe_prefill() {
  timeout 120 python3 -m pytest -q -m gpu -W ignore -p no:cacheprovider tests/test_prefill_graph.py \
    > "$1/pytest_gpu_prefill_graph.txt" 2>&1
  tail -2 "$1/pytest_gpu_prefill_graph.txt"
  for graphs in 0 1; do
    TTT_DECODE_PREFILL_GRAPHS=$graphs timeout 120 python3 exp/gpu/prefill_diag.py "$1/prefill_diag_graphs$graphs.json" \
      2>&1 | grep -E "wall"
  done
}

recipe_ray() {
  local cells="--models ${MODELS:-ttt-1b,mamba-1.4b} --inner-nets ${INNER_NETS:-mlp_1_dual_triton,mamba_triton}"
  cells="$cells --batches ${BATCHES:-256,512} --genlens ${GENLEN:-128} --use_compile --repeats 2"
  timeout 250 $TTD sweep --logdir "$1/local" $cells 2>&1 | tail -2
  timeout 250 $TTD sweep --logdir "$1/ray" --backend ray $cells 2>&1 | tail -2
  for b in local ray; do $TTD report "$1/$b" --out "$1/$b/report" > /dev/null 2>&1; done
  python3 - "$1" <<'PY'
import json, sys
rows = {}
for backend in ("local", "ray"):
    for line in open(f"{sys.argv[1]}/{backend}/results.jsonl"):
        r = json.loads(line)
        rows.setdefault((r["model"], r.get("inner_net"), r["batch"]), {})[backend] = r
print("| model | inner net | B | local tok/s | ray tok/s | ray / local | ray node |")
for (m, n, b), d in sorted(rows.items()):
    lo, ra = (d.get(k, {}).get("decode_tokens_per_s") for k in ("local", "ray"))
    ratio = f"{ra / lo:.3f}" if lo and ra else "-"
    fmt = lambda x: f"{x:.0f}" if x else "-"  # noqa: E731
    print(f"| {m} | {n} | {b} | {fmt(lo)} | {fmt(ra)} | {ratio} | {(d.get('ray') or {}).get('ray_node')} |")
PY
}

# The study's records go under $OUT/study (STUDY_DIR), so that a sweep cut off by the 10-minute limit of a
# call still brings back what it recorded. RESUME_FROM=<folder with a results.jsonl> (e.g. the records a
# previous call brought back, committed) starts from its records, so the next call runs only the cells
# not yet recorded (RETRY=oom,error also reruns the cells recorded so). DRY_RUN=1 lists the cells (and
# what is recorded) without running any. The grid is what one session's 30 minutes of device time allow
# (each cell is a fresh process: ~25 s of start, compile and capture before its steps): BATCHES,
# CONTEXT_BATCHES widen it.
recipe_study() {
  local dir=${STUDY_DIR:-$OUT/study} t=${SWEEP_TIMEOUT:-540} dry=${DRY_RUN:+--dry-run}
  local sweep="timeout $t $TTD sweep --logdir $dir --use_compile --cell-timeout 300 $dry ${RETRY:+--retry $RETRY}"
  if [ -n "${RESUME_FROM:-}" ] && [ ! -s "$dir/results.jsonl" ]; then
    mkdir -p "$dir" && cp "$RESUME_FROM/results.jsonl" "$dir/results.jsonl" || return 2
  fi
  case "${STUDY:-batch}" in
    batch)
      # The seed's grid at genlen 128 (every second doubling unless BATCHES says more), one batch per
      # model at genlen 2048 (constant cost over a long generation); one timed run per cell after the
      # untimed one.
      $sweep --models mamba-1.4b,ttt-1b --inner-nets mamba_triton,mlp_1_dual_triton,mlp_2_dual_triton \
        --batches "${BATCHES:-128,512,2048,8192}" --genlens 128 --repeats 1 2>&1 | tail -3
      $sweep --models mamba-1.4b,ttt-1b --inner-nets mamba_triton,mlp_1_dual_triton,mlp_2_dual_triton \
        --batches 128 --genlens 2048 --repeats 1 2>&1 | tail -3
      [ -z "${BASELINES:-}" ] || {
        $sweep --models mamba-ssm:mamba-1.4b --batches 128,512,2048 --genlens 128 --repeats 1 2>&1 | tail -3
        $sweep --models ttt-1b --inner-nets mlp_2_primal_triton --batches 512,1024 --genlens 128 --repeats 1 \
          2>&1 | tail -3; } ;;
    context)
      # Time per token against context: the KV-cache Transformer grows, the recurrent models stay flat.
      $sweep --models llama-1.3b,mamba-1.4b,ttt-1b --inner-nets attn_triton,mamba_triton,mlp_1_dual_triton,mlp_2_dual_triton \
        --batches "${CONTEXT_BATCHES:-16,64}" --promptlens 1k,4k,16k,32k --genlens 64 --repeats 1 2>&1 | tail -3
      # HF_LLAMA=1: transformers' LlamaForCausalLM with a static cache, the Transformer a user would
      # otherwise pick (needs a transformers with StaticCache.early_initialization, 5.24 has it).
      [ -z "${HF_LLAMA:-}" ] || $sweep --models hf:llama-1.3b --batches "${CONTEXT_BATCHES:-16,64}" \
        --promptlens 1k,4k,16k,32k --genlens 64 --repeats 1 2>&1 | tail -3 ;;
    *) echo "STUDY must be batch or context" >&2; return 2 ;;
  esac
  [ -n "$dry" ] || $TTD report "$dir" --out "$dir/report" 2>&1 | tail -12
}

recipe=${1:-}; shift || true
case "$recipe" in
  study)
    recipe_study
    ;;
  kernels|micro|positions|check|sweep|profile|fidelity|attention|prefill|ray)
    # TAG names a second run of the same recipe in one call (e.g. TAG=fp16 for another --state-dtype).
    name=$recipe${TAG:+_$TAG}
    dir=$OUT/$name; rm -rf "$dir"; mkdir -p "$dir"
    "recipe_$recipe" "$dir" "$@"
    tar czf "$OUT/$name.tgz" -C "$dir" . && rm -rf "$dir"
    ;;
  step)
    dir=$OUT/step; rm -rf "$dir"; mkdir -p "$dir"
    for r in ${RECIPES:-check sweep profile fidelity}; do echo "== $r"; "recipe_$r" "$dir"; done
    tar czf "$OUT/step.tgz" -C "$dir" . && rm -rf "$dir"
    ;;
  *) echo "usage: bash exp/gpu/run.sh kernels|micro|positions|check|sweep|profile|fidelity|attention|prefill|step|study|ray" >&2; exit 2 ;;
esac
