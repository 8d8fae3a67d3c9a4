"""The SwiGLU MLP's first product with its activation (ops.swiglu_gemm) against what the step runs without it: cuBLAS's
gate_up product, then the silu * up kernel that torch.compile makes of `F.silu(gate) * up` (one run, one machine
state).

Why: folding the activation into the product is one launch a layer less (M1's step 224 -> 200 launches, issue 14)
and saves writing and reading back the [B, 2 N] product; it pays only if a Triton GEMM with two accumulators runs
close to cuBLAS's nvjet kernel (33.3 us a layer at B = 512 on an H100, at the matmul floor). So every tile
configuration of a small grid is timed, each first checked against a float64 reference with the PyTorch path's
roundings (`tests/test_swiglu_gemm.py`'s), at the sweeps' batch sizes; the dispatcher's own pick (config_for) is
marked. Timed as the step runs them: one x against --copies distinct weights (one a layer, so no weight stays in
L2), all in one CUDA graph, median of its replays.

One JSON line per (batch, variant) to $OUT/swiglu_gemm.jsonl, a table last (the best fused configuration against
the unfused pair per batch).

    PYTHONPATH=src python3 exp/gpu/swiglu_gemm_micro.py --out $OUT --commit <sha> [--batches 64,128,256,512,1024]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import time

import torch
import torch.nn.functional as F

from ttt_decode.bench.micro import time_calls
from ttt_decode.bench.roofline import measure_matmul_tflops
from ttt_decode.ops import swiglu_gemm as sg
from ttt_decode.provenance import gpu_name

N, K = 5504, 2048  # ttt-1b's MLP: intermediate size, hidden size (--shape for a CPU dry run)


def grid_configs():
    for bm, bn, bk, warps, stages in itertools.product((64, 128), (64, 128, 256), (64,), (4, 8), (3, 4)):
        if bm == 128 and warps == 4 and bn == 256:
            continue  # two [128, 256] float32 accumulators in 128 threads: 512 registers a thread
        yield {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "num_warps": warps, "NUM_STAGES": stages}


def reference(x, w):
    prod = x.double() @ w.double().t()
    g, u = prod[:, :N].to(x.dtype).float(), prod[:, N:].to(x.dtype).float()
    return (F.silu(g).to(x.dtype).float() * u).to(x.dtype)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--commit", default="unknown")
    p.add_argument("--batches", default="64,128,256,512,1024")
    p.add_argument("--copies", type=int, default=24)
    p.add_argument("--max-configs", type=int, default=96, help="at most this many grid configurations a batch")
    p.add_argument("--device", default="cuda", help="cpu: a dry run of the script under TRITON_INTERPRET=1")
    p.add_argument("--shape", default=None, help="N,K instead of ttt-1b's (small ones for a dry run)")
    a = p.parse_args()
    global N, K
    if a.shape:
        N, K = (int(v) for v in a.shape.split(","))
    dev = torch.device(a.device)
    gen = torch.Generator(device=dev).manual_seed(0)
    tflops = measure_matmul_tflops(dev, torch.float16, min_total_ms=200.0)
    ws = [torch.randn(2 * N, K, dtype=torch.float16, device=dev, generator=gen) * K ** -0.5 for _ in range(a.copies)]
    def silu_mul(y):
        return F.silu(y[:, :N]) * y[:, N:]
    act = torch.compile(silu_mul, fullgraph=True, dynamic=False) if dev.type == "cuda" else silu_mul
    os.makedirs(a.out, exist_ok=True)
    path = os.path.join(a.out, "swiglu_gemm.jsonl")
    best = {}
    command = "PYTHONPATH=src python3 exp/gpu/swiglu_gemm_micro.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(a).items() if k != "out")
    with open(path, "w") as fh:
        for B in (int(b) for b in a.batches.split(",")):
            x = torch.randn(B, K, dtype=torch.float16, device=dev, generator=gen)
            ref = reference(x, ws[0])
            floor_us = 4 * B * N * K / (tflops * 1e12) * 1e6
            pick = sg.config_for(B, N, K)
            variants = [("cublas gate_up only", "gemm"), ("cublas+inductor", None), ("fused pick", pick)]
            variants += [(f"fused {c}", c) for c in list(grid_configs())[:a.max_configs] if c != pick]
            for vname, cfg in variants:
                if cfg == "gemm":  # the product alone: what the pair's second kernel adds, by difference
                    fn = lambda w: F.linear(x, w)  # noqa: E731
                elif cfg is None:
                    fn = lambda w: act(F.linear(x, w))  # noqa: E731
                else:
                    fn = lambda w, cfg=cfg: sg.launch(x, w, cfg)  # noqa: E731
                try:
                    out = fn(ws[0])
                    if cfg == "gemm":
                        out = act(out)  # checked as the pair; timed alone below
                    exact = (out == ref).float().mean().item()
                    err = ((out.float() - ref.float()).abs() / ref.float().abs().clamp_min(1e-2)).max().item()
                    if err > 4 * 2 ** -10:
                        print(f"B={B} {vname}: wrong (max rel err {err:.2e}); not timed", flush=True)
                        continue
                    t = time_calls([lambda w=w: fn(w) for w in ws], dev, 30)
                except Exception as e:  # noqa: BLE001  a configuration that does not fit (shared memory): go on
                    print(f"B={B} {vname}: {type(e).__name__}: {str(e)[:160]}", flush=True)
                    continue
                rec = {"kind": "swiglu_gemm", "batch": B, "N": N, "K": K, "variant": vname, "config": cfg,
                       "us": round(t["us"], 2), "p10": round(t["p10"], 2), "p90": round(t["p90"], 2),
                       "floor_us": round(floor_us, 2), "pct_of_matmul_rate": round(100 * floor_us / t["us"], 1),
                       "max_rel_err": err, "share_exact": round(exact, 4), "matmul_tflops": tflops,
                       "gpu": gpu_name(dev), "torch": torch.__version__, "commit": a.commit,
                       "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "command": command}
                fh.write(json.dumps(rec) + "\n")
                fh.flush()
                key = ("gemm" if cfg == "gemm" else "unfused" if cfg is None else "pick" if vname == "fused pick"
                       else "grid")
                if key != "grid" or rec["us"] < best.get((B, "grid"), {"us": float("inf")})["us"]:
                    best[(B, key)] = rec
    print(f"matmul rate {tflops:.0f} TFLOP/s; floor = 4 B N K FLOPs at that rate")
    print("| B | cuBLAS gate_up us | cuBLAS + silu*up us | fused (pick) us | best fused us | best config | "
          "best / unfused |")
    for B in sorted({b for b, _ in best}):
        u, pk, g = best.get((B, "unfused")), best.get((B, "pick")), best.get((B, "grid"))
        gm = best.get((B, "gemm"), {}).get("us", "-")
        bst = min((r for r in (pk, g) if r), key=lambda r: r["us"], default=None)
        if not (u and bst):
            print(f"| {B} | {gm} | {u['us'] if u else '-'} | - | - | - | - |")
            continue
        print(f"| {B} | {gm} | {u['us']} | {pk['us'] if pk else '-'} | {bst['us']} | {bst['config']} | "
              f"{bst['us'] / u['us']:.3f} |")


if __name__ == "__main__":
    main()
