"""Decode attention Triton kernel: one query per (sequence, head) against the first n cache rows.

Computes what naive.decode_attention computes (online softmax in float32) but reads only the valid
rows: n is loaded from a device tensor inside the kernel, so one CUDA graph serves every position
while the work grows with the context, as it does for a real Transformer.

Compulsory bytes per call: 2 * n * f * itemsize (K and V rows) + q in + out, per (sequence, head).
FLOPs: 4 * n * f per (sequence, head). Grid: (B * H,). Mutates nothing.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ttt_decode.errors import UserError
from ttt_decode.ops.kernel_op import check_interpreter, step_op


@triton.jit
def _decode_attention_kernel(q_ptr, k_ptr, v_ptr, o_ptr, n_ptr, stride_qb, stride_kb, stride_kt, stride_ob,
                             sm_scale, F: tl.constexpr, BLOCK_T: tl.constexpr):
    pid = tl.program_id(0)  # flattened (b, h): q/o rows and cache planes are contiguous per (b, h)
    n = tl.load(n_ptr)
    o_f = tl.arange(0, F)
    b_q = tl.load(q_ptr + pid.to(tl.int64) * stride_qb + o_f).to(tl.float32) * sm_scale  # [F]
    p_k = k_ptr + pid.to(tl.int64) * stride_kb
    p_v = v_ptr + pid.to(tl.int64) * stride_kb
    m_i = tl.full((), float("-inf"), tl.float32)
    l_i = tl.zeros((), tl.float32)
    b_acc = tl.zeros((F,), tl.float32)
    for start in range(0, n, BLOCK_T):
        o_t = start + tl.arange(0, BLOCK_T)
        m_t = o_t < n
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
    tl.store(o_ptr + pid.to(tl.int64) * stride_ob + o_f, (b_acc / l_i).to(o_ptr.dtype.element_ty))


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


def launch(q, k_cache, v_cache, n_valid, out):
    """The kernel into out [B, H, f] (nothing checked here: decode_attention checks)."""
    B, H, f = q.shape
    # 64 rows per block keeps the K/V tiles at 8 KB (fp16, f=64): many blocks in flight per SM.
    _decode_attention_kernel[(B * H,)](q, k_cache, v_cache, out, n_valid, f, k_cache.shape[2] * f, f, f,
                                       1.0 / math.sqrt(f), F=f, BLOCK_T=64, num_warps=4)
    return out


step_op("decode_attention", ("q", "k_cache", "v_cache", "n_valid"), (), launch)


def decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                     n_valid: torch.Tensor) -> torch.Tensor:
    """q [B,H,f]; k_cache, v_cache [B,H,T,f]; n_valid [1] int64 -> out [B,H,f]."""
    _check(q, k_cache, v_cache, n_valid)
    check_interpreter()
    return torch.ops.ttt_decode.decode_attention(q, k_cache, v_cache, n_valid)
