"""Launch configurations of the Mamba decode kernels on this GPU, per layer at mamba-1.4b shapes: the state pass
(`_ssm_step_kernel`, fp32 and fp16 state), the conv output (`_conv_step_kernel`) and the block boundary
(`_add_rms_norm_kernel`, its warps). The first defaults were picked on the H100 (triton_decode.ssm_config).
The conv ring and the norm's rows fit in L2 at these batches, so their replays read L2, not HBM.

Each configuration is checked against the default one on the same inputs and state first; times are
medians of CUDA-graph replays (triton.testing.do_bench_cudagraph) after warm-up, with the copy bandwidth
measured in the same run. One JSON line per (kernel, state dtype, batch, config) under --out.

    PYTHONPATH=src python3 exp/gpu/mamba_config_sweep.py --out $OUT/mamba_cfg --commit <sha>
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch
import triton

from ttt_decode.bench.mamba_micro import make_inputs
from ttt_decode.configs import get_config
from ttt_decode.ops.mamba import conv_step_bytes, ssm_step_bytes
from ttt_decode.ops.mamba import triton_decode as td

SSM = [(128, 1, 4), (128, 1, 2), (128, 1, 8), (64, 1, 1), (64, 1, 2), (256, 1, 4), (256, 1, 8), (512, 1, 8),
       (128, 2, 4), (128, 2, 8), (64, 2, 2), (64, 4, 4), (32, 4, 2), (256, 2, 8)]
CONV = [(256, 2, 4), (256, 1, 4), (512, 1, 4), (512, 2, 4), (1024, 1, 4), (1024, 1, 8), (128, 4, 4), (256, 4, 8),
        (512, 4, 8), (128, 1, 2)]
NORM_WARPS = [8, 4, 2, 16]


def copy_bw() -> float:
    a = torch.empty(1 << 28, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    ms = triton.testing.do_bench(lambda: b.copy_(a), warmup=50, rep=300, return_mode="median")
    return 2 * a.numel() / ms / 1e6  # GB/s


def rel(a, b) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def timed(fn) -> float:
    return triton.testing.do_bench_cudagraph(fn, rep=150, return_mode="median") * 1e3  # us


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--commit", default="unknown")
    ap.add_argument("--batches", default="512,1024,64")
    ap.add_argument("--ssm-configs", default=None,
                    help="BLOCK_D:ROWS:warps,... for the state pass (default: the 14 of SSM); the first is the "
                         "reference the others are checked against")
    ap.add_argument("--kernels", default="ssm,conv", help="ssm and/or conv (conv includes add_rms_norm)")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    cfg = get_config("mamba-1.4b")
    D, S, W = cfg.d_inner, cfg.d_state, cfg.d_conv
    bw = copy_bw()
    rows = []

    def record(**kw):
        kw.update(copy_gbs=bw, commit=args.commit, gpu=torch.cuda.get_device_name(), time=time.time(),
                  command="PYTHONPATH=src python3 exp/gpu/mamba_config_sweep.py")
        if kw.get("us"):
            kw["pct_copy"] = 100 * kw["bytes"] / (kw["us"] * 1e3) / bw
        rows.append(kw)
        print(json.dumps(kw), flush=True)

    batches = [int(b) for b in args.batches.split(",")]
    kernels = args.kernels.split(",")
    ssm_cfgs = [tuple(int(v) for v in c.split(":")) for c in args.ssm_configs.split(",")] if args.ssm_configs else SSM
    for state_dtype in (torch.float32, torch.float16) if "ssm" in kernels else ():
        for batch in batches:
            a = make_inputs(cfg, batch, state_dtype, torch.device("cuda"))
            out = torch.empty(batch, D, dtype=torch.float16, device="cuda")
            ins = (a["x"], a["x_c"], a["z"], a["dt"], a["B"], a["C"], a["A_log"], a["D"], a["dt_bias"],
                   a["conv_state"], a["conv_pos"])
            st0 = a["ssm_state"].clone()
            ref_st = st0.clone()
            ref_y = td._launch_ssm_step(*ins, ref_st, out.clone(),
                                        dict(zip(("BLOCK_D", "ROWS", "num_warps"), ssm_cfgs[0])))
            nbytes = ssm_step_bytes(batch, D, S, 2, state_dtype.itemsize, 2)
            for bd, r, w in ssm_cfgs:
                c = {"BLOCK_D": bd, "ROWS": r, "num_warps": w}
                st = st0.clone()
                y = td._launch_ssm_step(*ins, st, out, c).clone()
                ok = rel(y, ref_y) < 1e-5 and rel(st, ref_st) < 1e-5
                us = timed(lambda c=c, st=st: td._launch_ssm_step(*ins, st, out, c)) if ok else None
                record(kernel="ssm_step", config=c, state_dtype=str(state_dtype).split(".")[-1], batch=batch, us=us,
                       ok=ok, bytes=nbytes)
    for batch in batches if "conv" in kernels else ():
        a = make_inputs(cfg, batch, torch.float32, torch.device("cuda"))
        w_conv = torch.randn(W, D, device="cuda").half()  # tap-major, as the decode state holds it
        bias = torch.randn(D, device="cuda").half()
        out = torch.empty(batch, D, dtype=torch.float16, device="cuda")
        ref = td._launch_conv_step(a["x"], a["conv_state"], a["conv_pos"], w_conv, bias, out.clone(),
                                   dict(zip(("BLOCK_D", "ROWS", "num_warps"), CONV[0])))
        nbytes = conv_step_bytes(batch, D, W, 2, 2)
        for bd, r, w in CONV:
            c = {"BLOCK_D": bd, "ROWS": r, "num_warps": w}
            y = td._launch_conv_step(a["x"], a["conv_state"], a["conv_pos"], w_conv, bias, out, c).clone()
            ok = torch.equal(y, ref)
            us = timed(lambda c=c: td._launch_conv_step(a["x"], a["conv_state"], a["conv_pos"], w_conv, bias, out,
                                                        c)) if ok else None
            record(kernel="conv_step", config=c, batch=batch, us=us, ok=ok, bytes=nbytes)
        d = cfg.d_model
        h = torch.randn(batch, d, device="cuda")
        delta = torch.randn(batch, d, device="cuda").half()
        wn = torch.randn(d, device="cuda").half()
        h_new, x = torch.empty_like(h), torch.empty_like(delta)
        ref_h, ref_x = td._add_rms_norm_impl(h, delta, wn, 1e-5)
        nbytes = batch * d * (2 * 4 + 2 * 2) + d * 2
        for nw in NORM_WARPS:
            def norm(nw=nw):
                td._add_rms_norm_kernel[(batch,)](h, delta, wn, h_new, x, d, h.stride(0), delta.stride(0), 1e-5,
                                                  BLOCK=triton.next_power_of_2(d), COMPUTE=td.tl.float32, num_warps=nw)
            norm()
            # h_new is exact; x within rounding (the warps change the order of the sum of squares).
            ok = torch.equal(h_new, ref_h) and rel(x, ref_x) < 1e-3
            record(kernel="add_rms_norm", config={"num_warps": nw}, batch=batch, us=timed(norm) if ok else None,
                   ok=ok, bytes=nbytes)
    with open(os.path.join(args.out, f"mamba_config_sweep_{args.commit}.jsonl"), "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    print(f"\ncopy bandwidth {bw:.0f} GB/s")
    for r in rows:
        us = f"{r['us']:8.2f} {r['pct_copy']:5.1f}%" if r.get("us") else "       -"
        print(f"{r['kernel']:12s} {r.get('state_dtype', ''):8s} {r['batch']:5d} {json.dumps(r['config']):48s} {us}"
              f" ok={int(r['ok'])}")


if __name__ == "__main__":
    main()
