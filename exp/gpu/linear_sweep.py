"""The decode step's GEMMs: cuBLAS (F.linear) against a Triton GEMM (below) over a grid of tiles, pipeline depths
and K splits, at the batch sizes of the sweeps (one run, one machine state).

The kernel: a [BM, BN] output tile a program, fp32 accumulation on the tensor cores, loads pipelined over
`stages` buffers; with n_split > 1 the K range is split over n_split programs a tile, reduced in one launch
by the tile's last program in split order (`reduce_splits`: the same bits on every run, whichever program
finishes last). On the H200 it lost to cuBLAS at every shape but one (exp/NOTES.md, seventh session), so it
lives here, not in src/.

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
import functools
import itertools
import json
import os
import sys
import time
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from ttt_decode.bench.micro import time_calls
from ttt_decode.bench.roofline import measure_matmul_tflops
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

# Counter slots per device: at most this many output tiles in one split-K call.
MAX_TILES = 4096


@functools.lru_cache(maxsize=None)
def counters(device: torch.device) -> torch.Tensor:
    """The device's zeroed tile counters (allocated once; every call leaves them zero)."""
    return torch.zeros(MAX_TILES, dtype=torch.int32, device=device)


@triton.jit
def reduce_splits(acc, part_ptr, count_ptr, tile, split, n_split, split_stride, offs, mask):
    """Store this split's partial acc at part_ptr + split * split_stride + offs; returns (last, total):
    last is true in the one program of the tile that finished last, and there total is the sum of all
    n_split partials in split order (elsewhere total is acc, unused)."""
    tl.store(part_ptr + split.to(tl.int64) * split_stride + offs, acc, mask=mask)
    tl.debug_barrier()  # every lane's partial is stored before the counter says so
    done = tl.atomic_add(count_ptr + tile, 1, sem="acq_rel", scope="gpu")
    last = done == n_split - 1
    total = acc
    if last:
        total = tl.load(part_ptr + offs, mask=mask, other=0.0, cache_modifier=".cg")
        for s in range(1, n_split):
            total += tl.load(part_ptr + s * split_stride + offs, mask=mask, other=0.0, cache_modifier=".cg")
        tl.store(count_ptr + tile, 0)  # ready for the next call (stream order makes it visible)
    return last, total


def check_tiles(tiles: int, what: str) -> None:
    assert tiles <= MAX_TILES, f"{what}: {tiles} split-K tiles > the {MAX_TILES} counters"


def workspace(n_split: int, rows: int, cols: int, device) -> torch.Tensor:
    """The fp32 partials of one call, [n_split, rows, cols] (every element written before it is read)."""
    return torch.empty((n_split, rows, cols), dtype=torch.float32, device=device)


@triton.jit
def _linear_kernel(x_ptr, w_ptr, b_ptr, out_ptr, part_ptr, count_ptr, M, N, K, k_len, n_split,
                   stride_xm, stride_wn, stride_om,
                   HAS_BIAS: tl.constexpr, SPLIT: tl.constexpr, EVEN_K: tl.constexpr,
                   BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, STAGES: tl.constexpr):
    pid = tl.program_id(0)  # output tile, N fastest: neighbouring programs share x's rows
    sid = tl.program_id(1)  # K split
    n_tiles = tl.cdiv(N, BN)
    o_m = (pid // n_tiles) * BM + tl.arange(0, BM)
    o_n = (pid % n_tiles) * BN + tl.arange(0, BN)
    o_k = tl.arange(0, BK)
    m_m = o_m < M
    m_n = o_n < N
    k_lo = sid * k_len  # k_len: a multiple of BK, so the splits tile K without overlap
    k_hi = tl.minimum(k_lo + k_len, K)
    x_p = x_ptr + o_m[:, None].to(tl.int64) * stride_xm + (k_lo + o_k)[None, :]  # [BM, BK]
    w_p = w_ptr + o_n[None, :].to(tl.int64) * stride_wn + (k_lo + o_k)[:, None]  # [BK, BN]: W^T's tile
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k in tl.range(k_lo, k_hi, BK, num_stages=STAGES):
        if EVEN_K:  # K % BK == 0: every K block is whole
            a = tl.load(x_p, mask=m_m[:, None], other=0.0)
            b = tl.load(w_p, mask=m_n[None, :], other=0.0)
        else:
            m_k = (k + o_k) < K
            a = tl.load(x_p, mask=m_m[:, None] & m_k[None, :], other=0.0)
            b = tl.load(w_p, mask=m_n[None, :] & m_k[:, None], other=0.0)
        acc = tl.dot(a, b, acc)
        x_p += BK
        w_p += BK
    m_out = m_m[:, None] & m_n[None, :]
    if SPLIT:
        last, acc = reduce_splits(acc, part_ptr, count_ptr, pid, sid, n_split, M * N,
                                  o_m[:, None].to(tl.int64) * N + o_n[None, :], m_out)
    else:
        last = True
    if last:
        if HAS_BIAS:
            acc += tl.load(b_ptr + o_n, mask=m_n, other=0.0).to(tl.float32)[None, :]
        tl.store(out_ptr + o_m[:, None].to(tl.int64) * stride_om + o_n[None, :],
                 acc.to(out_ptr.dtype.element_ty), mask=m_out)


class LinearConfig(NamedTuple):
    """A launch configuration: output tile BM x BN, K block BK, K split over n_split programs."""

    BM: int
    BN: int
    BK: int
    n_split: int = 1
    stages: int = 3
    num_warps: int = 4

    def grid(self, M: int, N: int) -> tuple[int, int]:
        return triton.cdiv(M, self.BM) * triton.cdiv(N, self.BN), self.n_split

    def k_len(self, K: int) -> int:
        """K elements per split, a multiple of BK (the last split may be shorter)."""
        return triton.cdiv(triton.cdiv(K, self.BK), self.n_split) * self.BK


def check_config(cfg: LinearConfig, M: int, N: int, K: int) -> None:
    tiles, n_split = cfg.grid(M, N)
    assert n_split >= 1 and (cfg.k_len(K) * (n_split - 1) < K), \
        f"linear: {n_split} splits of {cfg.k_len(K)} leave a split with no K for K={K}"
    if n_split > 1:
        check_tiles(tiles, "linear")


def launch(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, out: torch.Tensor,
           cfg: LinearConfig) -> torch.Tensor:
    """out [M, N] = x [M, K] @ weight [N, K]^T (+ bias [N]) with this configuration."""
    M, K = x.shape
    N = weight.shape[0]
    assert weight.shape[1] == K and x.stride(1) == 1 and weight.stride(1) == 1 and out.stride(1) == 1, \
        f"linear: x {tuple(x.shape)} {x.stride()}, weight {tuple(weight.shape)} {weight.stride()}"
    check_config(cfg, M, N, K)
    split = cfg.n_split > 1
    part = workspace(cfg.n_split, M, N, x.device) if split else out
    count = counters(x.device) if split else out
    _linear_kernel[cfg.grid(M, N)](
        x, weight, bias if bias is not None else weight, out, part, count, M, N, K, cfg.k_len(K), cfg.n_split,
        x.stride(0), weight.stride(0), out.stride(0),
        HAS_BIAS=bias is not None, SPLIT=split, EVEN_K=K % cfg.BK == 0,
        BM=cfg.BM, BN=cfg.BN, BK=cfg.BK, STAGES=cfg.stages, num_warps=cfg.num_warps)
    return out


def candidates(M: int, N: int, K: int):
    for (bm, bn, bk, w), st, s in itertools.product(TILES, STAGES, SPLITS):
        cfg = LinearConfig(bm, bn, bk, s, st, w)
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

            t = time_calls([lambda w=w, x=x: torch.nn.functional.linear(x, w) for w in ws], dev, 20)
            cub = emit({"impl": "cublas", "us": round(t["us"], 2), "p10": round(t["p10"], 2),
                        "p90": round(t["p90"], 2)})
            best[(name, M)] = [cub, None]
            outs = [torch.empty(M, N, dtype=torch.float16, device=dev) for _ in ws]
            for cfg in candidates(M, N, K):
                c = cfg._asdict()
                try:
                    launch(x, ws[0], None, outs[0], cfg)
                    err = (outs[0].double() - ref).abs().max().item()
                    again = outs[0].clone()
                    launch(x, ws[0], None, outs[0], cfg)
                    same = torch.equal(again, outs[0])
                except Exception as e:  # a configuration the compiler rejects (shared memory, registers)
                    emit({"impl": "triton", "config": c, "error": f"{type(e).__name__}: {str(e)[:200]}"})
                    continue
                if err > tol or not same:
                    emit({"impl": "triton", "config": c, "error": f"check: max err {err:.3g} (tol {tol:.3g}), "
                                                                 f"same bits twice {same}"})
                    continue
                calls = [lambda w=w, o=o, x=x, cfg=cfg: launch(x, w, None, o, cfg) for w, o in zip(ws, outs)]
                t = time_calls(calls, dev, 20)
                rec = emit({"impl": "triton", "config": c, "max_err": err, "us": round(t["us"], 2),
                            "p10": round(t["p10"], 2), "p90": round(t["p90"], 2)})
                if best[(name, M)][1] is None or rec["us"] < best[(name, M)][1]["us"]:
                    best[(name, M)][1] = rec
            del x, outs
            print(f"{name} M={M} done, t={time.time() - t0:.0f}s", flush=True)
        del ws
        torch.cuda.empty_cache()
    print(f"matmul rate {rate:.0f} TFLOP/s")
    print("| gemm | M | floor us | cuBLAS us (%) | best Triton us (%) | config | cuBLAS / Triton |")
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
