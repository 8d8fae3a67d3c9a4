"""Run one Triton TTT kernel configuration at ttt-1b shapes, fp16 state, for Nsight Compute.

The calls to profile run inside an NVTX range named "profile" (after a warm-up that compiles), so ncu
is told which launches to look at by range rather than by counting them:

    ncu --clock-control none --nvtx --nvtx-include "profile/" --section SpeedOfLight ... \
        python3 exp/gpu/ncu_one.py --kernel mlp_2_dual_triton --config '{"kernel": "chunked", ...}' --positions 0,15
"""

import argparse
import json

import torch

from ttt_decode.bench.micro import ttt_micro_case


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--kernel", default="mlp_2_dual_triton")
    p.add_argument("--config", default=None, help="launch configuration as JSON (default: the kernel's own)")
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--positions", default="0,15", help="mini-batch positions whose calls are profiled")
    a = p.parse_args()
    cfg = json.loads(a.config) if a.config else None
    fns, *_ = ttt_micro_case(a.kernel, a.batch, torch.float16, "cuda", "ttt-1b", torch.float16, config=cfg)
    for fn in fns[:16]:  # warm-up: compiles every kernel the calls launch
        fn()
    torch.cuda.synchronize()
    torch.cuda.nvtx.range_push("profile")
    for x in a.positions.split(","):
        fns[int(x)]()
    torch.cuda.synchronize()
    torch.cuda.nvtx.range_pop()


if __name__ == "__main__":
    main()
