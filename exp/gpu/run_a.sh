#!/usr/bin/env bash
# Device run A (issues 2, 3, 5): launch-configuration sweep of the TTT kernels at B=512, model-level
# checks of the Triton inner loops at ttt-1b (CUDA graph vs eager, compiled vs eager, fidelity against
# the float32 PyTorch path), the seed's profile script, and the GPU test suite. Everything lands in $OUT.
#   COMMIT=$(git rev-parse --short HEAD) bash exp/gpu/run_a.sh
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=src
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 ))s] $*"; }
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"; } | tee "$OUT/env.txt"

el "kernel sweep"
timeout 230 python3 exp/gpu/kernels_check_and_time.py --out "$OUT/kernels.jsonl" --run A --commit "${COMMIT:-unknown}" \
  --stages env,sweep,batch --budget 210 > "$OUT/kernels_log.txt" 2>&1
tail -45 "$OUT/kernels_log.txt"

el "model checks"
C="python3 -m ttt_decode.cli check --model-name ttt-1b --batch 16 --steps 64 --out $OUT/check.jsonl"
timeout 60 $C --inner_net mlp_2_dual_triton --dtype float32 --checks fidelity --reference-inner-net mlp_2_dual \
  --reference-dtype float32 2>&1 | tail -4
timeout 60 $C --inner_net mlp_2_dual_triton --dtype float16 --checks graph_vs_eager,fidelity 2>&1 | tail -4
timeout 60 $C --inner_net mlp_1_dual_triton --dtype float16 --checks graph_vs_eager,fidelity 2>&1 | tail -4
timeout 120 $C --inner_net mlp_2_dual_triton --dtype float16 --steps 32 --checks compiled_vs_eager 2>&1 | tail -4

el "profile.sh"
INNER_NET=mlp_2_dual_triton LOGDIR=$OUT/prof timeout 60 bash scripts/profile.sh 2>&1 | tail -25
(cd "$OUT" && tar czf prof.tgz prof && rm -rf prof)

el "pytest -m gpu"
timeout 120 python3 -m pytest -q -m gpu -x -W ignore tests 2>&1 | tail -8 | tee "$OUT/pytest_gpu.txt"
el "done"
