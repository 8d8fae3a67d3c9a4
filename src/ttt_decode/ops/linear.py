"""Decode-step GEMMs in Triton: out = x @ W^T (+ bias), x [M, K], W [N, K] (nn.Linear's layout).

Why a GEMM of our own: at decode shapes M is the batch (a few hundred rows) and cuBLAS's choices leave
the H200 half idle on some of them: at M = 512 a [512, 4096] x [4096, 2048] product in 128 x 128 tiles
is 64 programs for 132 multiprocessors, and Mamba's x_proj ([512, 4096] x [4096, 160]) goes through a
split-K kernel plus a second reduce launch. Here the tile and the K split are picked per shape from a
sweep on the H200 (`config`); shapes the sweep did not win stay on cuBLAS (`linear` falls back to
F.linear).

Kernel: a program computes one [BM, BN] output tile over one K range, fp32 accumulation on the tensor
cores (`tl.dot`), loads pipelined over `STAGES` buffers. With n_split > 1 the K range is split over
n_split programs per tile (grid axis 1); each writes its fp32 partial to a workspace [n_split, M, N] and
increments the tile's counter; the program that sees the count reach n_split sums the partials in split
order 0, 1, ... and writes the output, then zeroes the counter for the next call. The sum's order never
depends on which program finishes last, so the result is the same bits on every run (graph vs eager
stays bitwise equal), and there is no second launch. The counters are one persistent int32 buffer per
device (`_counters`): calls on one stream are serialised, which is how the decode step runs; two
concurrent split-K calls on different streams would share it (do not do that).

Compulsory bytes per call: (M K + N K) a (x and W read) + M N a (out written) [+ N a bias]; with a split,
+ 2 n_split M N 4 of fp32 partials (written, read back; L2-resident at decode shapes).  FLOPs: 2 M N K.

`linear(x, weight, bias)` takes x [..., K] like F.linear. Arithmetic: fp32 accumulate, bias added in
fp32, one rounding to the output dtype (x's), as cuBLAS's fp16 GEMM with a bias epilogue; the bits differ
from cuBLAS's (another summation order), within fp16 tolerance of a float64 reference.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from ttt_decode.ops.kernel_op import interpreting, kernel_op


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
        tile = o_m[:, None].to(tl.int64) * N + o_n[None, :]
        tl.store(part_ptr + sid.to(tl.int64) * M * N + tile, acc, mask=m_out)
        tl.debug_barrier()  # every lane's partial is stored before the counter says so (release below)
        done = tl.atomic_add(count_ptr + pid, 1, sem="acq_rel", scope="gpu")
        if done == n_split - 1:  # the last of the tile's splits to finish: reduce in split order
            acc = tl.load(part_ptr + tile, mask=m_out, other=0.0, cache_modifier=".cg")
            for s in range(1, n_split):
                acc += tl.load(part_ptr + s * M * N + tile, mask=m_out, other=0.0, cache_modifier=".cg")
            tl.store(count_ptr + pid, 0)  # ready for the next call (stream order makes it visible)
            if HAS_BIAS:
                acc += tl.load(b_ptr + o_n, mask=m_n, other=0.0).to(tl.float32)[None, :]
            tl.store(out_ptr + o_m[:, None].to(tl.int64) * stride_om + o_n[None, :],
                     acc.to(out_ptr.dtype.element_ty), mask=m_out)
    else:
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


# Per (N, K): (from_batch, config) rows, the first row whose from_batch <= M wins (rows in descending
# order); a shape absent here, or a batch below every row, stays on cuBLAS. Empty until the H200 sweep
# (exp/gpu/linear_sweep.py) names winners.
CONFIGS: dict[tuple[int, int], list[tuple[int, LinearConfig]]] = {}

# Counter slots per device: at most this many output tiles in one split-K call.
MAX_SPLIT_TILES = 4096


def config(M: int, N: int, K: int) -> LinearConfig | None:
    """The swept configuration for this shape and batch, or None (cuBLAS)."""
    for from_batch, cfg in CONFIGS.get((N, K), ()):
        if M >= from_batch:
            return cfg
    return None


@functools.lru_cache(maxsize=None)
def _counters(device: torch.device) -> torch.Tensor:
    return torch.zeros(MAX_SPLIT_TILES, dtype=torch.int32, device=device)


def check_config(cfg: LinearConfig, M: int, N: int, K: int) -> None:
    tiles, n_split = cfg.grid(M, N)
    assert n_split >= 1 and (cfg.k_len(K) * (n_split - 1) < K), \
        f"linear: {n_split} splits of {cfg.k_len(K)} leave a split with no K for K={K}"
    assert n_split == 1 or tiles <= MAX_SPLIT_TILES, f"linear: {tiles} tiles > {MAX_SPLIT_TILES} counters"


def launch(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, out: torch.Tensor,
           cfg: LinearConfig) -> torch.Tensor:
    """out [M, N] = x [M, K] @ weight [N, K]^T (+ bias [N]) with this configuration."""
    M, K = x.shape
    N = weight.shape[0]
    assert weight.shape[1] == K and x.stride(1) == 1 and weight.stride(1) == 1 and out.stride(1) == 1, \
        f"linear: x {tuple(x.shape)} {x.stride()}, weight {tuple(weight.shape)} {weight.stride()}"
    check_config(cfg, M, N, K)
    split = cfg.n_split > 1
    part = torch.empty((cfg.n_split, M, N) if split else (1,), dtype=torch.float32, device=x.device)
    counters = _counters(x.device) if split else part
    _linear_kernel[cfg.grid(M, N)](
        x, weight, bias if bias is not None else weight, out, part, counters, M, N, K, cfg.k_len(K), cfg.n_split,
        x.stride(0), weight.stride(0), out.stride(0),
        HAS_BIAS=bias is not None, SPLIT=split, EVEN_K=K % cfg.BK == 0,
        BM=cfg.BM, BN=cfg.BN, BK=cfg.BK, STAGES=cfg.stages, num_warps=cfg.num_warps)
    return out


def _linear_impl(x, weight, bias):
    M, N = x.shape[0], weight.shape[0]
    out = torch.empty((M, N), dtype=x.dtype, device=x.device)
    return launch(x, weight, bias, out, config(M, N, x.shape[1]))


kernel_op("linear", ["Tensor x", "Tensor weight", "Tensor? bias"], (), _linear_impl,
          lambda x, weight, bias: x.new_empty((x.shape[0], weight.shape[0])))


def uses_triton(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether `linear` runs the Triton kernel for these operands (else cuBLAS / PyTorch)."""
    if not (x.is_cuda or interpreting()) or x.dtype not in (torch.float16, torch.bfloat16):
        return False
    if weight.dtype != x.dtype or weight.stride(1) != 1:
        return False
    M = x.numel() // x.shape[-1] if x.shape[-1] else 0
    return config(M, weight.shape[0], weight.shape[1]) is not None


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear(x, weight, bias), through the Triton kernel where the H200 sweep picked a configuration for
    the shape and batch (fp16 / bf16 operands), else F.linear."""
    if not uses_triton(x, weight):
        return F.linear(x, weight, bias)
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])
    if x2.stride(1) != 1:
        x2 = x2.contiguous()
    return torch.ops.ttt_decode.linear(x2, weight, bias).reshape(*lead, weight.shape[0])
