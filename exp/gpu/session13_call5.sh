#!/usr/bin/env bash
# Session 13, device call 5 (COMMIT=<sha>; .whl/ carried as for call 4): call 4's sweep again, packed into
# $OUT/sweep.tgz. Call 4 returned its profile files but not the sweep's: a call returns a limited number of
# files, and the profile's came first.
set -uo pipefail
cd "$(dirname "$0")/../.."
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
C=${COMMIT:?pass COMMIT=<short sha> of the tree sent}
export TTT_DECODE_COMMIT=$C
start=$SECONDS
if [ -f .whl/site.tar.xz ]; then tar xJf .whl/site.tar.xz -C /tmp; else
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl; fi
export PYTHONPATH=/tmp/site:src
TTD="python3 -m ttt_decode.cli"
S="--logdir $OUT/sweep --genlens 128 --use_compile --repeats 2"
timeout 200 $TTD sweep $S --models ttt-1b --inner-nets mlp_2_dual_triton,mlp_1_dual_triton --batches 512,1024 2>&1 | tail -1
timeout 120 $TTD sweep $S --models mamba-1.4b,mamba-ssm:mamba-1.4b --inner-nets mamba_triton --batches 512 2>&1 | tail -1
timeout 80 $TTD sweep $S --models mamba-1.4b --inner-nets mamba_triton --batches 512 --state-dtype float16 2>&1 | tail -1
rm -rf "$OUT"/sweep/.compile-cache "$OUT"/sweep/.sweep/*.lock "$OUT"/sweep/.sweep/lock
$TTD report "$OUT/sweep" --out "$OUT/sweep/report" > "$OUT/sweep/report_log.txt" 2>&1
tar czf "$OUT/sweep.tgz" -C "$OUT/sweep" . && rm -rf "$OUT/sweep"
echo "t=$((SECONDS - start))"
