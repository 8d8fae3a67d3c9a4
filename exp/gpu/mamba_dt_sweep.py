"""Mamba decode: dt_proj fused into the state pass (`_ssm_step_dt_kernel`) against the separate dt_proj GEMM
+ `_ssm_step_kernel`, per layer at mamba-1.4b shapes, fp32 and fp16 state, over launch configurations.

Each configuration is checked against the unfused pair (same inputs and state) before it is timed; times
are medians of CUDA-graph replays (triton.testing.do_bench_cudagraph) after warm-up, with the copy
bandwidth measured in the same run. One JSON line per (state dtype, batch, variant) under --out.

    PYTHONPATH=src python3 exp/gpu/mamba_dt_sweep.py --out $OUT/mamba_dt --commit <sha>
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch
import torch.nn.functional as F
import triton

from ttt_decode.bench.mamba_micro import make_inputs
from ttt_decode.configs import get_config
from ttt_decode.ops.mamba import ssm_step_bytes
from ttt_decode.ops.mamba import triton_decode as td

CONFIGS = [{"BLOCK_D": 128, "ROWS": r, "num_warps": 4} for r in (8, 16, 32)] + [
    {"BLOCK_D": 64, "ROWS": 16, "num_warps": 2}, {"BLOCK_D": 256, "ROWS": 16, "num_warps": 8},
    {"BLOCK_D": 64, "ROWS": 32, "num_warps": 4}]


def copy_bw() -> float:
    a = torch.empty(1 << 28, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    ms = triton.testing.do_bench(lambda: b.copy_(a), warmup=50, rep=300, return_mode="median")
    return 2 * a.numel() / ms / 1e6  # GB/s


def rel(a, b) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--commit", default="unknown")
    ap.add_argument("--batches", default="64,512,1024")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    cfg = get_config("mamba-1.4b")
    D, S, R = cfg.d_inner, cfg.d_state, cfg.dt_rank
    bw = copy_bw()
    rows = []
    for state_dtype in (torch.float32, torch.float16):
        for batch in [int(b) for b in args.batches.split(",")]:
            a = make_inputs(cfg, batch, state_dtype, torch.device("cuda"))
            g = torch.Generator(device="cuda").manual_seed(1)
            dbc = (torch.randn(batch, R + 2 * S, generator=g, device="cuda") * 0.5).half()
            dt_r, Bm, Cm = dbc[:, :R], dbc[:, R:R + S], dbc[:, R + S:]
            w_dt = (torch.randn(D, R, generator=g, device="cuda") * R ** -0.5).half()
            out = torch.empty(batch, D, dtype=torch.float16, device="cuda")
            common = (a["A_log"], a["D"], a["dt_bias"], a["conv_state"], a["conv_pos"])

            def unfused(state):
                dt = F.linear(dt_r, w_dt)
                return td._launch_ssm_step(a["x"], a["x_c"], a["z"], dt, Bm, Cm, *common, state, out)

            def fused(state, c):
                return td._launch_ssm_step_dt(a["x"], a["x_c"], a["z"], dt_r, w_dt, Bm, Cm, *common, state, out, c)

            st0 = a["ssm_state"].clone()
            st_ref = st0.clone()
            y_ref = unfused(st_ref).clone()
            variants = [("unfused", None)] + [(f"fused_D{c['BLOCK_D']}_R{c['ROWS']}_w{c['num_warps']}", c)
                                              for c in CONFIGS]
            nbytes = ssm_step_bytes(batch, D, S, 2, state_dtype.itemsize, 2)
            for name, c in variants:
                st = st0.clone()
                if c is not None:
                    y = fused(st, c).clone()
                    err_y, err_s = rel(y, y_ref), rel(st, st_ref)
                    ok = err_y < 2e-3 and err_s < 2e-3
                else:
                    err_y = err_s = 0.0
                    ok = True
                fn = (lambda: unfused(st)) if c is None else (lambda c=c: fused(st, c))
                us = triton.testing.do_bench_cudagraph(fn, rep=200, return_mode="median") * 1e3 if ok else None
                rec = {"variant": name, "config": c, "state_dtype": str(state_dtype).split(".")[-1], "batch": batch,
                       "us": us, "ok": ok, "err_y": err_y, "err_state": err_s, "ssm_bytes": nbytes,
                       "copy_gbs": bw, "commit": args.commit, "gpu": torch.cuda.get_device_name(),
                       "command": "PYTHONPATH=src python3 exp/gpu/mamba_dt_sweep.py", "time": time.time()}
                rows.append(rec)
                print(json.dumps(rec), flush=True)
    with open(os.path.join(args.out, f"mamba_dt_sweep_{args.commit}.jsonl"), "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    print(f"\ncopy bandwidth {bw:.0f} GB/s")
    print(f"{'state':6s} {'B':>5s} {'variant':24s} {'us':>8s} {'ok':>3s} {'err_y':>8s}")
    for r in rows:
        us = f"{r['us']:.2f}" if r["us"] else "-"
        print(f"{r['state_dtype']:6s} {r['batch']:5d} {r['variant']:24s} {us:>8s} {int(r['ok']):3d} {r['err_y']:.1e}")


if __name__ == "__main__":
    main()
