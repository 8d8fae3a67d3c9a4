"""The decode step's N = 2048 GEMMs (ttt-1b o_proj and down, mamba-1.4b out_proj) with K split over a batched
cuBLAS call, against the plain product, at the sweeps' batch sizes (one run, one machine state).

Why: at B = 512 an [B, K] x [K, 2048] product in 128 x 128 tiles is 4 x 16 = 64 tiles, half of the H200's
132 multiprocessors (linear_sweep_h200_f5c96cc.jsonl: o_proj 9.18 us, 63% of the matmul rate; mamba's out_proj
16.3 us, 68%). The same product as torch.bmm over s slices of K ([s, B, K/s] x [s, K/s, N], strided views, no
copy) gives s x 64 tiles in one launch; the s partials (float32, out_dtype) are then summed by the kernel that
reads the product next (the residual add), so the split costs (s - 1) more [B, N] float32 reads there and
s [B, N] float32 writes here instead of one fp16 write.

Each case is timed as the step runs it: one x against --copies distinct weights (one a layer, so no weight stays
in L2), all in one CUDA graph, median of its replays. Every variant is first checked against a float64 product
(max error over the output's scale). One JSON line per (shape, batch, variant) to $OUT/splitk_gemm.jsonl, a
table last.

    PYTHONPATH=src python3 exp/gpu/splitk_gemm.py --out $OUT --commit <sha> [--batches 256,512,1024]
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from ttt_decode.bench.micro import time_calls
from ttt_decode.bench.roofline import measure_matmul_tflops
from ttt_decode.provenance import gpu_name

SHAPES = {"ttt.o_proj": (2048, 2048), "ttt.down": (2048, 5504), "mamba.out_proj": (2048, 4096),
          "ttt.in_proj": (6176, 2048), "mamba.in_proj": (8192, 2048)}


def split_views(x: torch.Tensor, w: torch.Tensor, s: int):
    """x [B, K], w [N, K] -> ([s, B, K/s], [s, K/s, N]) views of the same storage (no copy)."""
    B, K = x.shape
    N = w.shape[0]
    return x.view(B, s, K // s).transpose(0, 1), w.view(N, s, K // s).permute(1, 2, 0)


def variants(s_list):
    yield "mm_fp16", lambda x, w: torch.nn.functional.linear(x, w)
    yield "mm_fp32out", lambda x, w: torch.mm(x, w.t(), out_dtype=torch.float32)
    for s in s_list:
        yield f"bmm_split{s}_fp32out", lambda x, w, s=s: torch.bmm(*split_views(x, w, s), out_dtype=torch.float32)
        yield f"bmm_split{s}_fp16", lambda x, w, s=s: torch.bmm(*split_views(x, w, s))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--commit", default="unknown")
    p.add_argument("--batches", default="256,512,1024")
    p.add_argument("--splits", default="2,3,4")
    p.add_argument("--copies", type=int, default=24)
    a = p.parse_args()
    dev = torch.device("cuda")
    gen = torch.Generator(device=dev).manual_seed(0)
    tflops = measure_matmul_tflops(dev, torch.float16, min_total_ms=200.0)
    os.makedirs(a.out, exist_ok=True)
    path = os.path.join(a.out, "splitk_gemm.jsonl")
    rows = []
    with open(path, "w") as fh:
        for name, (N, K) in SHAPES.items():
            ws = [torch.randn(N, K, dtype=torch.float16, device=dev, generator=gen) * K ** -0.5
                  for _ in range(a.copies)]
            for B in (int(b) for b in a.batches.split(",")):
                x = torch.randn(B, K, dtype=torch.float16, device=dev, generator=gen)
                ref = (x.double() @ ws[0].double().t())
                scale = ref.abs().max().item()
                floor_us = 2 * B * N * K / (tflops * 1e12) * 1e6
                splits = [s for s in (int(v) for v in a.splits.split(",")) if K % (8 * s) == 0]
                for vname, fn in variants(splits):
                    try:
                        out = fn(x, ws[0])
                        got = out.double().sum(0) if out.dim() == 3 else out.double()
                        err = (got - ref).abs().max().item() / scale
                        t = time_calls([lambda w=w, fn=fn: fn(x, w) for w in ws], dev, 30)
                    except (RuntimeError, NotImplementedError) as e:  # a variant this torch lacks: say so, go on
                        print(f"{name} B={B} {vname}: {repr(e)[:200]}", flush=True)
                        continue
                    rec = {"shape": name, "N": N, "K": K, "batch": B, "variant": vname, "us": round(t["us"], 2),
                           "p10": round(t["p10"], 2), "p90": round(t["p90"], 2), "floor_us": round(floor_us, 2),
                           "pct_of_matmul_rate": round(100 * floor_us / t["us"], 1), "max_err_over_scale": err,
                           "matmul_tflops": tflops, "gpu": gpu_name(dev), "torch": torch.__version__,
                           "commit": a.commit, "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
                           "command": "PYTHONPATH=src python3 exp/gpu/splitk_gemm.py " + " ".join(
                               f"--{k} {v}" for k, v in vars(a).items() if k != "out")}
                    fh.write(json.dumps(rec) + "\n")
                    fh.flush()
                    rows.append(rec)
    print(f"matmul rate {tflops:.0f} TFLOP/s")
    print("| shape | B | variant | us | % rate | err |")
    for r in rows:
        print(f"| {r['shape']} | {r['batch']} | {r['variant']} | {r['us']:.2f} | {r['pct_of_matmul_rate']:.0f} | "
              f"{r['max_err_over_scale']:.1e} |")


if __name__ == "__main__":
    main()
