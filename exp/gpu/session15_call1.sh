#!/usr/bin/env bash
# Session 15's first device call, not run in session 15 (no machine was lent): run it first in the next session
# with a device (COMMIT=<sha> of the tree sent; no wheels needed). About 8-9 minutes.
#   1. `pytest -m gpu` of the whole tree: the deferred W1 term of the M2 dual kernel (DESIGN section 9.8) at real
#      shapes, and what session 14 left unrun (gluon_decode.copyable's row strides, the record_tokens kernel,
#      the zero-residual buffer).
#   2. The M2 dual kernel at its dispatcher's configurations, per mini-batch position, with the deferred W1 term
#      (TTT_DECODE_M2_DEFER_W1=1, the default when this was written; off since) and without (=0, the kernel as at eec92ce), one after the other on
#      the same machine: B = 512 and the scan at 64, 1024, 2048 (exp/gpu/kernel_sweep.py --recipe defaults).
#      Predicted (offline SASS): ordinary positions faster (pass A 542 instead of 655 instructions a chunk),
#      the last position well under 2.4x an ordinary one (no second W1 read).
#   3. The K-split GEMM micro-benchmark (exp/gpu/splitk_gemm.py).
#   4. The compiled ttt-1b M1 step's profile at B=512: launches a step (229 measured at 9340303; 224 predicted).
# Everything under $OUT/call1, packed into $OUT/call1.tgz; a table last.
set -uo pipefail
cd "$(dirname "$0")/../.."
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; D=$OUT/call1; mkdir -p "$D"
C=${COMMIT:?pass COMMIT=<short sha> of the tree sent}
export TTT_DECODE_COMMIT=$C
start=$SECONDS
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv > "$D/gpu.txt"; cat "$D/gpu.txt"
PYTHONPATH=src timeout 240 python3 -m pytest -q -m gpu -W ignore -p no:cacheprovider tests/ > "$D/pytest_gpu.txt" 2>&1
tail -3 "$D/pytest_gpu.txt"; echo "t=$((SECONDS - start))"
for defer in 1 0; do
  TTT_DECODE_M2_DEFER_W1=$defer PYTHONPATH=src timeout 120 python3 exp/gpu/kernel_sweep.py --recipe defaults \
    --kernels mlp_2_dual_triton --out "$D/defer$defer" --commit "$C" > "$D/defer${defer}_log.txt" 2>&1
  tail -5 "$D/defer${defer}_log.txt"
done
echo "t=$((SECONDS - start))"
PYTHONPATH=src timeout 120 python3 exp/gpu/splitk_gemm.py --out "$D" --commit "$C" > "$D/splitk_log.txt" 2>&1
echo "t=$((SECONDS - start))"
PYTHONPATH=src timeout $((570 - (SECONDS - start))) python3 -m ttt_decode.cli profile --logdir "$D/profile" \
  --model-name ttt-1b --inner_net mlp_1_dual_triton --batch 512 --genlen 16 --use_compile 2>&1 \
  | grep -E "^\| |^step" | head -8
echo "t=$((SECONDS - start))"
grep -E "^matmul|^\| shape|\| 512 \|" "$D/splitk_log.txt"
tar czf "$OUT/call1.tgz" -C "$D" . && rm -rf "$D"
