#!/usr/bin/env bash
# Session 7, device call 1: the decode GEMMs, cuBLAS against the Triton kernel of ops/linear.py at every
# shape of mamba-1.4b and ttt-1b (exp/gpu/linear_sweep.py), then `ttt-decode check` for mamba-1.4b at the
# tap-major conv (fp32 and fp16 state), which the last session's final check predates.
set -uo pipefail
cd "$(dirname "$0")/../.."
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
C=${COMMIT:-unknown}
start=$SECONDS
PYTHONPATH=src timeout 420 python3 exp/gpu/linear_sweep.py --out "$OUT" --commit "$C" --batches 256,512,1024 \
  > "$OUT/linear_sweep_log.txt" 2>&1; grep -v '^{' "$OUT/linear_sweep_log.txt" | tail -40
echo "t=$((SECONDS - start))"
for sd in float32 float16; do
  left=$((570 - (SECONDS - start)))
  [ $left -gt 40 ] && PYTHONPATH=src TTT_DECODE_COMMIT=$C timeout $((left / 2)) python3 -m ttt_decode.cli check \
    --model-name mamba-1.4b --inner_net mamba_triton --state-dtype $sd --batch 16 --steps 64 \
    --checks decode_vs_forward,graph_vs_eager,compiled_vs_eager,batch_vs_single --out "$OUT/check_mamba.jsonl" 2>&1 | tail -6
done
echo "t=$((SECONDS - start))"
