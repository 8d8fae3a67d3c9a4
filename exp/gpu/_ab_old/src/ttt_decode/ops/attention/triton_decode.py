"""Decode attention Triton kernel: one query per (sequence, head) against the first n cache rows.

Computes what naive.decode_attention computes (online softmax in float32) but reads only the valid
rows: n is loaded from a device tensor inside the kernel, so one CUDA graph serves every position
while the work grows with the context, as it does for a real Transformer.

Compulsory bytes per call: 2 * n * f * itemsize (K and V rows) + q in + out, per (sequence, head).
FLOPs: 4 * n * f per (sequence, head). Mutates nothing.

Two launch shapes. One pass (splits 1): grid (B * H,), each program walks all n rows. Split (splits
S > 1, a power of two; "flash-decoding"): grid (B * H, S), each program walks a contiguous S-th of
the rows and writes its running max, sum and unnormalised output (float32), and a second kernel
combines the S partials per (sequence, head). `pick_config` chooses between them from the H200 sweep
of 21 configurations (exp/results/h200/attention_sweep_h200_5ee693e/, exp/gpu/attention_sweep.py):
64 rows a block on one warp won or tied at every batch and context (1.36-1.61x over the former
default of 4 warps), and the split pays when B * H programs are too few to fill the GPU.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ttt_decode.errors import UserError
from ttt_decode.ops.kernel_op import check_interpreter, step_op


@triton.jit
def _attend(b_q, p_k, p_v, lo, hi, stride_kt, o_f, F: tl.constexpr, BLOCK_T: tl.constexpr):
    """Online softmax of the query b_q [F] (scaled) over cache rows [lo, hi) -> (max, sum, unnormalised out)."""
    m_i = tl.full((), float("-inf"), tl.float32)
    l_i = tl.zeros((), tl.float32)
    b_acc = tl.zeros((F,), tl.float32)
    for start in range(lo, hi, BLOCK_T):
        o_t = start + tl.arange(0, BLOCK_T)
        m_t = o_t < hi
        off = o_t[:, None].to(tl.int64) * stride_kt + o_f[None, :]
        b_k = tl.load(p_k + off, mask=m_t[:, None], other=0.0).to(tl.float32)  # [BLOCK_T, F]
        b_s = tl.where(m_t, tl.sum(b_k * b_q[None, :], axis=1), float("-inf"))  # [BLOCK_T]
        m_new = tl.maximum(m_i, tl.max(b_s, axis=0))
        b_p = tl.exp(b_s - m_new)
        alpha = tl.exp(m_i - m_new)
        b_v = tl.load(p_v + off, mask=m_t[:, None], other=0.0).to(tl.float32)
        l_i = l_i * alpha + tl.sum(b_p, axis=0)
        b_acc = b_acc * alpha + tl.sum(b_p[:, None] * b_v, axis=0)
        m_i = m_new
    return m_i, l_i, b_acc


@triton.jit
def _decode_attention_kernel(q_ptr, k_ptr, v_ptr, o_ptr, n_ptr, stride_qb, stride_kb, stride_kt, stride_ob,
                             sm_scale, F: tl.constexpr, BLOCK_T: tl.constexpr):
    pid = tl.program_id(0)  # flattened (b, h): q/o rows and cache planes are contiguous per (b, h)
    n = tl.load(n_ptr)
    o_f = tl.arange(0, F)
    b_q = tl.load(q_ptr + pid.to(tl.int64) * stride_qb + o_f).to(tl.float32) * sm_scale  # [F]
    p_k = k_ptr + pid.to(tl.int64) * stride_kb
    p_v = v_ptr + pid.to(tl.int64) * stride_kb
    m_i, l_i, b_acc = _attend(b_q, p_k, p_v, 0, n, stride_kt, o_f, F, BLOCK_T)
    tl.store(o_ptr + pid.to(tl.int64) * stride_ob + o_f, (b_acc / l_i).to(o_ptr.dtype.element_ty))


@triton.jit
def _split_kernel(q_ptr, k_ptr, v_ptr, m_ptr, l_ptr, acc_ptr, n_ptr, stride_qb, stride_kb, stride_kt, sm_scale,
                  SPLITS: tl.constexpr, F: tl.constexpr, BLOCK_T: tl.constexpr):
    pid = tl.program_id(0)
    split = tl.program_id(1)
    n = tl.load(n_ptr)
    # Each split a whole number of row blocks; the last ones may be empty (then max -inf, sum 0).
    per = tl.cdiv(tl.cdiv(n, SPLITS), BLOCK_T) * BLOCK_T
    lo = split * per
    hi = tl.minimum(n, lo + per)
    o_f = tl.arange(0, F)
    b_q = tl.load(q_ptr + pid.to(tl.int64) * stride_qb + o_f).to(tl.float32) * sm_scale
    p_k = k_ptr + pid.to(tl.int64) * stride_kb
    p_v = v_ptr + pid.to(tl.int64) * stride_kb
    m_i, l_i, b_acc = _attend(b_q, p_k, p_v, lo, hi, stride_kt, o_f, F, BLOCK_T)
    row = pid.to(tl.int64) * SPLITS + split
    tl.store(m_ptr + row, m_i)
    tl.store(l_ptr + row, l_i)
    tl.store(acc_ptr + row * F + o_f, b_acc)


@triton.jit
def _combine_kernel(m_ptr, l_ptr, acc_ptr, o_ptr, stride_ob, SPLITS: tl.constexpr, F: tl.constexpr):
    pid = tl.program_id(0)
    o_s = tl.arange(0, SPLITS)
    o_f = tl.arange(0, F)
    rows = pid.to(tl.int64) * SPLITS + o_s
    b_m = tl.load(m_ptr + rows)  # [S]; split 0 always holds a row (n >= 1), so the max is finite
    b_w = tl.exp(b_m - tl.max(b_m, axis=0))  # empty splits: exp(-inf) = 0
    b_l = tl.sum(b_w * tl.load(l_ptr + rows), axis=0)
    b_acc = tl.sum(b_w[:, None] * tl.load(acc_ptr + rows[:, None] * F + o_f[None, :]), axis=0)  # [F]
    tl.store(o_ptr + pid.to(tl.int64) * stride_ob + o_f, (b_acc / b_l).to(o_ptr.dtype.element_ty))


def _check(q, k_cache, v_cache, n_valid):
    B, H, f = q.shape
    if f < 16 or f & (f - 1):
        raise UserError(f"decode attention kernel needs a power-of-two head dim >= 16, got {f}; use attn_ref")
    if k_cache.shape != v_cache.shape or k_cache.shape[:2] != (B, H) or k_cache.shape[3] != f:
        raise UserError(f"KV cache {tuple(k_cache.shape)} does not match q {tuple(q.shape)}")
    for name, t in (("q", q), ("k_cache", k_cache), ("v_cache", v_cache)):
        if not t.is_contiguous():
            raise UserError(f"decode attention needs a contiguous {name}")
    if n_valid.numel() != 1 or n_valid.dtype != torch.int64:
        raise UserError("n_valid must be a one-element int64 tensor")


# One warp on 64 rows a block: compiled for sm_90 it holds 168 registers (4 warps on the same rows: 247),
# so 12 programs share a multiprocessor instead of 2, with more K/V loads in flight. On the H200 it was the
# fastest or within 3% of it (with its best split) in every cell of the sweep (B 16/64, context 1k-32k).
DEFAULT_CONFIG = {"BLOCK_T": 64, "num_warps": 1, "splits": 1}
# Split the rows until about this many programs exist: at B=16 (512 programs) 4 splits ran 1.55-1.61x the
# one-pass launch of the same block and warps (39 vs 61 us at 1k, 955 vs 1640 us at 32k); at B=64 (2048
# programs) a split gained nothing (1864-1871 us at 16k for 1-8 splits).
TARGET_PROGRAMS = 2048
MAX_SPLITS = 8


def pick_config(batch_heads: int, capacity: int) -> dict:
    """The launch configuration for B * H (sequence, head) pairs over a cache of `capacity` rows.

    Depends only on shapes, so one CUDA graph serves every position; a split is kept only if each split
    covers at least two blocks of a full cache (below that its programs would be mostly empty)."""
    cfg = dict(DEFAULT_CONFIG)
    while (batch_heads * cfg["splits"] < TARGET_PROGRAMS and cfg["splits"] < MAX_SPLITS
           and capacity >= 2 * cfg["BLOCK_T"] * cfg["splits"] * 2):
        cfg["splits"] *= 2
    return cfg


def check_config(config: dict) -> dict:
    """A launch configuration with the defaults filled in; UserError naming a bad entry."""
    cfg = {**DEFAULT_CONFIG, **config}
    unknown = set(cfg) - set(DEFAULT_CONFIG)
    if unknown:
        raise UserError(f"unknown decode attention launch setting(s) {sorted(unknown)}; "
                        f"known: {sorted(DEFAULT_CONFIG)}")
    for key in DEFAULT_CONFIG:
        v = cfg[key]
        if not isinstance(v, int) or v < 1 or v & (v - 1):
            raise UserError(f"decode attention {key} must be a positive power of two, got {v!r}")
    if cfg["BLOCK_T"] < 16:
        raise UserError(f"decode attention BLOCK_T must be at least 16, got {cfg['BLOCK_T']}")
    return cfg


def launch(q, k_cache, v_cache, n_valid, out, config: dict | None = None):
    """The kernel(s) into out [B, H, f] (inputs not checked here: decode_attention checks them)."""
    B, H, f = q.shape
    cfg = pick_config(B * H, k_cache.shape[2]) if config is None else check_config(config)
    S, block, warps = cfg["splits"], cfg["BLOCK_T"], cfg["num_warps"]
    args = (k_cache.shape[2] * f, f)  # strides of a (b, h) plane and of a row
    if S == 1:
        _decode_attention_kernel[(B * H,)](q, k_cache, v_cache, out, n_valid, f, *args, f, 1.0 / math.sqrt(f),
                                           F=f, BLOCK_T=block, num_warps=warps)
        return out
    m = torch.empty(B * H * S, dtype=torch.float32, device=q.device)
    ell = torch.empty_like(m)
    acc = torch.empty(B * H * S * f, dtype=torch.float32, device=q.device)
    _split_kernel[(B * H, S)](q, k_cache, v_cache, m, ell, acc, n_valid, f, *args, 1.0 / math.sqrt(f),
                              SPLITS=S, F=f, BLOCK_T=block, num_warps=warps)
    _combine_kernel[(B * H,)](m, ell, acc, out, f, SPLITS=S, F=f, num_warps=1)
    return out


step_op("decode_attention", ("q", "k_cache", "v_cache", "n_valid"), (), launch)


def decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                     n_valid: torch.Tensor) -> torch.Tensor:
    """q [B,H,f]; k_cache, v_cache [B,H,T,f]; n_valid [1] int64 -> out [B,H,f]."""
    _check(q, k_cache, v_cache, n_valid)
    check_interpreter()
    return torch.ops.ttt_decode.decode_attention(q, k_cache, v_cache, n_valid)
