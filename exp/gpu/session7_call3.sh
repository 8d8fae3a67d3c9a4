#!/usr/bin/env bash
# Session 7, device call 3 (final code): `pytest -m gpu` of the whole tree, then one sweep of every model issue 14
# names at B=512 (ttt-1b M2 also at 1024): ttt-1b M2 and M1 dual Triton, mamba-1.4b (fp32 state) and
# mamba-ssm:mamba-1.4b; then mamba-1.4b with fp16 state. Reports; compile caches and sweep locks deleted.
# Needs the prebuilt mamba-ssm and causal-conv1d wheels in .whl/ (git-ignored), sent with the call's carry.
set -uo pipefail
cd "$(dirname "$0")/../.."
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
C=${COMMIT:-unknown}
start=$SECONDS
PYTHONPATH=src timeout 230 python3 -m pytest -q -m gpu -W ignore -p no:cacheprovider tests/ > "$OUT/pytest_gpu.txt" 2>&1
tail -3 "$OUT/pytest_gpu.txt"
echo "t=$((SECONDS - start))"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:src
export TTT_DECODE_COMMIT=$C
left=$((560 - (SECONDS - start)))
timeout $((left - 60)) python3 -m ttt_decode.cli sweep --logdir "$OUT/sweep" \
  --models ttt-1b,mamba-1.4b,mamba-ssm:mamba-1.4b --inner-nets mlp_2_dual_triton,mlp_1_dual_triton,mamba_triton \
  --batches 512 --genlens 128 --use_compile --repeats 2 2>&1 | tail -2
left=$((560 - (SECONDS - start)))
[ $left -gt 60 ] && timeout $((left - 40)) python3 -m ttt_decode.cli sweep --logdir "$OUT/sweep" --models ttt-1b \
  --inner-nets mlp_2_dual_triton --batches 1024 --genlens 128 --use_compile --repeats 2 2>&1 | tail -1
left=$((560 - (SECONDS - start)))
[ $left -gt 40 ] && timeout $((left - 20)) python3 -m ttt_decode.cli sweep --logdir "$OUT/sweep_fp16" --models mamba-1.4b \
  --inner-nets mamba_triton --batches 512 --genlens 128 --use_compile --repeats 2 --state-dtype float16 2>&1 | tail -1
for d in sweep sweep_fp16; do
  rm -rf "$OUT/$d/.compile-cache" "$OUT/$d/.sweep"
  python3 -m ttt_decode.cli report "$OUT/$d" --out "$OUT/$d/report" 2>&1 | tail -12
done
echo "t=$((SECONDS - start))"
