"""The decode step's GEMMs: cuBLAS (F.linear) against the Triton kernel of ops/linear.py over a grid of tiles,
pipeline depths and K splits, at the batch sizes of the sweeps (one run, one machine state).

Shapes (N, K): mamba-1.4b's in_proj, x_proj, dt_proj, out_proj and ttt-1b's in_proj, o_proj, gate_up, down.
Each case is timed as the step runs it: one x (the previous kernel's output, L2-resident) against
--copies distinct weights (one a layer, so no weight stays in L2), all in one CUDA graph, median of
its replays per call. Every Triton configuration is first checked against a float64 product (max error
within fp16 rounding of the output's scale) and, for split-K, for the same bits on a second run.
One JSON line per (shape, batch, configuration) to $OUT/linear_sweep.jsonl; the best per (shape, batch)
against cuBLAS last.

    PYTHONPATH=src python3 exp/gpu/linear_sweep.py --out $OUT --commit <sha> [--batches 256,512,1024]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time

import torch

from ttt_decode.bench.micro import time_calls
from ttt_decode.bench.roofline import measure_matmul_tflops
from ttt_decode.ops import linear as L
from ttt_decode.provenance import gpu_name

SHAPES = {  # name -> (N, K)
    "mamba.in_proj": (8192, 2048), "mamba.x_proj": (160, 4096), "mamba.dt_proj": (4096, 128),
    "mamba.out_proj": (2048, 4096),
    "ttt.in_proj": (3 * 2048 + 32, 2048), "ttt.o_proj": (2048, 2048), "ttt.gate_up": (11008, 2048),
    "ttt.down": (2048, 5504),
}
TILES = [(64, 32, 128, 4), (64, 64, 64, 4), (64, 64, 128, 4), (64, 128, 64, 4), (64, 128, 128, 4),
         (128, 64, 64, 4), (128, 64, 128, 4), (128, 128, 64, 4), (128, 128, 64, 8), (64, 256, 64, 4),
         (128, 256, 64, 8), (128, 32, 128, 4)]
STAGES = (3, 4)
SPLITS = (1, 2, 4, 8, 16)
SMS = 132


def candidates(M: int, N: int, K: int):
    for (bm, bn, bk, w), st, s in itertools.product(TILES, STAGES, SPLITS):
        cfg = L.LinearConfig(bm, bn, bk, s, st, w)
        tiles, _ = cfg.grid(M, N)
        if st * (bm + bn) * bk * 2 > 200 * 1024 or bk > K:
            continue
        if s > 1 and (tiles >= SMS or cfg.k_len(K) * (s - 1) >= K or cfg.k_len(K) < 2 * bk):
            continue
        if tiles * s > 8 * SMS or tiles * s < 16:
            continue
        yield cfg


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batches", default="256,512,1024")
    p.add_argument("--shapes", default=",".join(SHAPES))
    p.add_argument("--copies", type=int, default=24)
    p.add_argument("--out", default=os.environ.get("OUT", "/tmp/out"))
    p.add_argument("--commit", default="unknown")
    a = p.parse_args()
    os.makedirs(a.out, exist_ok=True)
    dev = torch.device("cuda")
    rate = measure_matmul_tflops(dev, torch.float16)
    meta = {"kind": "linear_sweep", "commit": a.commit, "gpu": gpu_name(dev), "torch": torch.__version__,
            "matmul_tflops": round(rate, 1), "command": " ".join(sys.argv)}
    path = os.path.join(a.out, "linear_sweep.jsonl")
    best = {}
    t0 = time.time()
    gen = torch.Generator(device=dev).manual_seed(0)
    for name in a.shapes.split(","):
        N, K = SHAPES[name]
        ws = [torch.randn(N, K, dtype=torch.float16, device=dev, generator=gen) * K ** -0.5 for _ in range(a.copies)]
        for M in (int(b) for b in a.batches.split(",")):
            x = torch.randn(M, K, dtype=torch.float16, device=dev, generator=gen)
            ref = (x.double() @ ws[0].double().T)
            tol = 2e-3 * ref.abs().max().item() + 1e-3
            flops = 2 * M * N * K
            floor = flops / rate / 1e6

            def emit(rec):
                rec = {**meta, "gemm": name, "M": M, "N": N, "K": K, "floor_us": round(floor, 2), **rec}
                if "us" in rec:
                    rec["pct_matmul_rate"] = round(100 * floor / rec["us"], 1)
                with open(path, "a") as fh:
                    fh.write(json.dumps(rec) + "\n")
                return rec

            t = time_calls([lambda w=w: torch.nn.functional.linear(x, w) for w in ws], dev, 20)
            cub = emit({"impl": "cublas", "us": round(t["us"], 2), "p10": round(t["p10"], 2),
                        "p90": round(t["p90"], 2)})
            best[(name, M)] = [cub, None]
            outs = [torch.empty(M, N, dtype=torch.float16, device=dev) for _ in ws]
            for cfg in candidates(M, N, K):
                c = cfg._asdict()
                try:
                    L.launch(x, ws[0], None, outs[0], cfg)
                    err = (outs[0].double() - ref).abs().max().item()
                    again = outs[0].clone()
                    L.launch(x, ws[0], None, outs[0], cfg)
                    same = torch.equal(again, outs[0])
                except Exception as e:  # a configuration the compiler rejects (shared memory, registers)
                    emit({"impl": "triton", "config": c, "error": f"{type(e).__name__}: {str(e)[:200]}"})
                    continue
                if err > tol or not same:
                    emit({"impl": "triton", "config": c, "error": f"check: max err {err:.3g} (tol {tol:.3g}), "
                                                                 f"same bits twice {same}"})
                    continue
                t = time_calls([lambda w=w, o=o: L.launch(x, w, None, o, cfg) for w, o in zip(ws, outs)], dev, 20)
                rec = emit({"impl": "triton", "config": c, "max_err": err, "us": round(t["us"], 2),
                            "p10": round(t["p10"], 2), "p90": round(t["p90"], 2)})
                if best[(name, M)][1] is None or rec["us"] < best[(name, M)][1]["us"]:
                    best[(name, M)][1] = rec
            del x, outs
            print(f"{name} M={M} done, t={time.time() - t0:.0f}s", flush=True)
        del ws
        torch.cuda.empty_cache()
    print(f"matmul rate {rate:.0f} TFLOP/s")
    print(f"| gemm | M | floor us | cuBLAS us (%) | best Triton us (%) | config | cuBLAS / Triton |")
    for (name, M), (cub, tri) in best.items():
        if tri is None:
            print(f"| {name} | {M} | {cub['floor_us']} | {cub['us']} ({cub['pct_matmul_rate']}) | - | - | - |")
            continue
        c = tri["config"]
        cs = f"{c['BM']}x{c['BN']}x{c['BK']} s{c['n_split']} st{c['stages']} w{c['num_warps']}"
        print(f"| {name} | {M} | {cub['floor_us']} | {cub['us']} ({cub['pct_matmul_rate']}) | {tri['us']} "
              f"({tri['pct_matmul_rate']}) | {cs} | {cub['us'] / tri['us']:.3f} |")


if __name__ == "__main__":
    main()
