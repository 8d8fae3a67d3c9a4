"""The decode step's GEMMs at B rows, alone, in the layouts and paddings the model could use (one run).

For each GEMM of a ttt-1b block (in_proj, o_proj, MLP gate_up, MLP down) and the LM head: us per call
from a CUDA graph of 24 calls on 24 distinct weights (as in the step: no weight stays in L2), as
the model runs it now (x @ W.T, W [out, in] as nn.Linear keeps it), with W stored transposed
(x @ Wt, Wt [in, out] contiguous: cuBLAS picks its kernel by layout too), and for in_proj with its
output width padded or its 32 lr columns split off into a GEMM of their own. Percent of the measured
fp16 matmul rate. One JSON line per case to $OUT/gemm_shapes.jsonl; a table last.

    PYTHONPATH=src python3 exp/gpu/gemm_shapes.py --out $OUT
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

from ttt_decode.bench.micro import time_calls
from ttt_decode.bench.roofline import measure_matmul_tflops
from ttt_decode.provenance import git_commit, gpu_name


def cases(D: int, inter: int, H: int, V: int):
    """name -> list of (K, N) GEMMs run back to back for one "call" (a split in_proj is two)."""
    n_in = 3 * D + H
    return {
        "in_proj": [(D, n_in)],
        "in_proj_pad128": [(D, -(-n_in // 128) * 128)],
        "in_proj_pad256": [(D, -(-n_in // 256) * 256)],
        "in_proj_split": [(D, 3 * D), (D, H)],
        "in_proj_no_lr": [(D, 3 * D)],
        "o_proj": [(D, D)],
        "gate_up": [(D, 2 * inter)],
        "down": [(inter, D)],
        "lm_head": [(D, V)],
    }


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--copies", type=int, default=24, help="distinct weights per graph (the model's layers)")
    p.add_argument("--out", default=os.environ.get("OUT", "/tmp/out"))
    p.add_argument("--commit", default=None)
    a = p.parse_args()
    os.makedirs(a.out, exist_ok=True)
    dev = torch.device("cuda")
    rate = measure_matmul_tflops(dev, torch.float16)
    meta = {"kind": "gemm_shapes", "commit": a.commit or git_commit(), "gpu": gpu_name(dev), "torch": torch.__version__,
            "batch": a.batch, "matmul_tflops": round(rate, 1), "command": " ".join(sys.argv)}
    rows = []
    for name, gemms in cases(2048, 5504, 32, 50280).items():
        copies = 2 if name == "lm_head" else a.copies
        for layout in ("W.T", "Wt"):
            x = [torch.randn(a.batch, k, dtype=torch.float16, device=dev) for k, _ in gemms]
            if layout == "W.T":
                ws = [[torch.randn(n, k, dtype=torch.float16, device=dev) for k, n in gemms] for _ in range(copies)]
                fns = [lambda w=w: [torch.mm(xi, wi.t()) for xi, wi in zip(x, w)] for w in ws]
            else:
                ws = [[torch.randn(k, n, dtype=torch.float16, device=dev) for k, n in gemms] for _ in range(copies)]
                fns = [lambda w=w: [torch.mm(xi, wi) for xi, wi in zip(x, w)] for w in ws]
            t = time_calls(fns, dev, 20)
            flops = sum(2 * a.batch * k * n for k, n in gemms)
            rec = {**meta, "gemm": name, "layout": layout, "shapes": gemms, "us": round(t["us"], 2),
                   "floor_us": round(flops / rate / 1e6, 2),
                   "pct_matmul_rate": round(100 * flops / t["us"] / 1e6 / rate, 1)}
            rows.append(rec)
            with open(os.path.join(a.out, "gemm_shapes.jsonl"), "a") as fh:
                fh.write(json.dumps(rec) + "\n")
            del ws, fns
            torch.cuda.empty_cache()
    print(f"matmul rate {rate:.0f} TFLOP/s, B={a.batch}")
    print(f"{'gemm':16s} {'layout':6s} {'us':>8s} {'floor':>8s} {'%rate':>6s}")
    for r in rows:
        print(f"{r['gemm']:16s} {r['layout']:6s} {r['us']:8.2f} {r['floor_us']:8.2f} {r['pct_matmul_rate']:6.1f}")


if __name__ == "__main__":
    main()
