#!/usr/bin/env bash
# Session 13, device call 4 (COMMIT=<sha> of the tree sent; the mamba-ssm / causal-conv1d wheels in .whl/, sent
# with the call's carry): the final code in one sweep logdir: ttt-1b M2 and M1 dual Triton at B = 512 and 1024,
# mamba-1.4b with fp32 state and mamba-ssm's mamba-1.4b at B = 512, mamba-1.4b with fp16 state at B = 512
# (--use_compile, prompt 1, 128 tokens, 2 repeats), its report; then the compiled step's profile of ttt-1b M1
# and M2 at B = 512.
set -uo pipefail
cd "$(dirname "$0")/../.."
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
C=${COMMIT:?pass COMMIT=<short sha> of the tree sent}
export TTT_DECODE_COMMIT=$C
start=$SECONDS
# The two wheels unpacked and packed again as .whl/site.tar.xz (site/ = their files), because the zip wheels and the
# tree together pass the 64 MiB a call carries; plain wheels in .whl/ are installed as usual.
if [ -f .whl/site.tar.xz ]; then tar xJf .whl/site.tar.xz -C /tmp; else
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl; fi
export PYTHONPATH=/tmp/site:src
TTD="python3 -m ttt_decode.cli"
S="--logdir $OUT/sweep --genlens 128 --use_compile --repeats 2"
timeout 200 $TTD sweep $S --models ttt-1b --inner-nets mlp_2_dual_triton,mlp_1_dual_triton --batches 512,1024 2>&1 | tail -1
timeout 120 $TTD sweep $S --models mamba-1.4b,mamba-ssm:mamba-1.4b --inner-nets mamba_triton --batches 512 2>&1 | tail -1
timeout 80 $TTD sweep $S --models mamba-1.4b --inner-nets mamba_triton --batches 512 --state-dtype float16 2>&1 | tail -1
echo "t=$((SECONDS - start))"
rm -rf "$OUT"/sweep/.compile-cache "$OUT"/sweep/.sweep/*.lock "$OUT"/sweep/.sweep/lock
$TTD report "$OUT/sweep" --out "$OUT/sweep/report" 2>&1 | tail -14
for net in mlp_1_dual_triton mlp_2_dual_triton; do
  [ $((SECONDS - start)) -lt 470 ] || break
  timeout 100 $TTD profile --logdir "$OUT/profile" --model-name ttt-1b --inner_net $net --batch 512 --genlen 16 \
    --use_compile 2>&1 | grep -E "^\| |^step" | head -9
done
echo "t=$((SECONDS - start))"
