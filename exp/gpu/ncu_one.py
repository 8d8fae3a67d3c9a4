"""Run one Triton TTT kernel configuration at ttt-1b shapes, B = 512, fp16 state, for `ncu` (Nsight Compute).

    ncu -k regex:_m2_dual --launch-skip 16 --launch-count 2 --section ... \
        python3 exp/gpu/ncu_one.py --kernel mlp_2_dual_triton --config '{"BLOCK_F": 64, ...}' [--positions 0,15]
"""

import argparse
import json

import torch

from ttt_decode.bench.micro import ttt_micro_case


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--kernel", default="mlp_2_dual_triton")
    p.add_argument("--config", default=None)
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--positions", default="0,15")
    a = p.parse_args()
    cfg = json.loads(a.config) if a.config else None
    fns, *_ = ttt_micro_case(a.kernel, a.batch, torch.float16, "cuda", "ttt-1b", torch.float16, config=cfg)
    b = 16
    sel = [fns[int(x)] for x in a.positions.split(",")]
    for fn in fns[:b]:  # warm-up: compiles, 16 launches
        fn()
    for fn in sel:
        fn()
    torch.cuda.synchronize()


if __name__ == "__main__":
    main()
