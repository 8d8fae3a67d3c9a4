"""Pieces shared by the Triton TTT decode kernels (ttt_linear/ and ttt_mlp/ triton_decode.py, triton_primal.py).

- jit helpers: gelu (tanh approximation) with its derivative, the inner LayerNorm forward and its
  backward fused with the L2 loss (ops.ttt_common's arithmetic, in float32, masked for head dims
  that are not a power of two), rounding to the cache dtype, the token's inputs, and the dual form's
  end-of-mini-batch update of a state tile from the cache rows;
- the boundary checks every kernel wrapper runs before its launch (shapes through
  ops.ttt_common.check_decode_inputs, then dtypes, contiguity and supported sizes), raising
  UserError for what a user can get wrong and asserting what only a caller bug can break;
- `advance_pos`, the tiny op that moves the mini-batch position after a kernel when the caller
  asks for it (a kernel cannot: its other programs still read the position).

Note on the Triton interpreter (CPU tests): a constexpr on the left of an operator with a tensor
(`K * x`) fails in Triton 3.8's interpreter, so products are written tensor first (`x * K`).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ttt_decode.errors import UserError
from ttt_decode.ops.kernel_op import interpreting
from ttt_decode.ops.ttt_common import DualCache, PrimalCache, check_decode_inputs

ACT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
STATE_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
# Head dims the kernels take: at most 128 (M2 hidden 4f up to 512), at least 16 (tl.arange, tl.dot and
# the row tiles need 16 lanes); sizes that are not a power of two are masked (e.g. 96).
MIN_HEAD_DIM, MAX_HEAD_DIM = 16, 128
MAX_MINI_BATCH = 64


@triton.jit
def rne(x, DT: tl.constexpr):
    """float32 x cast to DT, rounding to nearest even.

    bfloat16 is rounded explicitly on the bits: the Triton interpreter (the CPU tests) truncates
    float32 -> bfloat16 casts, which would double the rounding error the tests measure. The rounded
    value is exact in bfloat16, so on the GPU the result is the same as its cvt.rn."""
    if DT == tl.bfloat16:
        bits = x.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        return bits.to(tl.float32, bitcast=True).to(DT)
    else:
        return x.to(DT)


# sqrt(2 / pi) and 2 sqrt(2 / pi) log2(e): gelu_tanh(x) = 0.5 x (1 + tanh(u)) = x sigmoid(2u),
# u = sqrt(2 / pi) (x + 0.044715 x^3); sigmoid through exp2 and an approximate reciprocal (2 ulp).
_K0 = tl.constexpr(0.7978845608028654)
_K1 = tl.constexpr(2.302208198110385)


@triton.jit
def _sigmoid_2u(x):
    e = tl.exp2((x + x * x * x * 0.044715) * (-_K1))
    return tl.fdiv(1.0, e + 1.0)


@triton.jit
def gelu_and_grad(x):
    """gelu_tanh(x) and its derivative s + 2 x s (1 - s) u', s = sigmoid(2u)."""
    s = _sigmoid_2u(x)
    y = x * s
    dy = s + x * s * (1.0 - s) * (x * x * 0.134145 + 1.0) * (2.0 * _K0)
    return y, dy


@triton.jit
def gelu(x):
    return x * _sigmoid_2u(x)


@triton.jit
def ln_fwd(z, gamma, beta, m, N: tl.constexpr, EPS: tl.constexpr):
    """LayerNorm of a [BLOCK] vector whose first N entries (mask m) are real; padded entries give 0."""
    mu = tl.sum(z, 0) * (1.0 / N)
    d = tl.where(m, z - mu, 0.0)
    rstd = tl.math.rsqrt(tl.sum(d * d, 0) * (1.0 / N) + EPS)
    return tl.where(m, gamma * (d * rstd) + beta, 0.0)


@triton.jit
def ln_fused_l2_bwd(z, target, gamma, beta, m, N: tl.constexpr, EPS: tl.constexpr):
    """d/dz of 1/2 ||LN(z) - target||^2 for a [BLOCK] vector (mask m); z is 0 at padded entries."""
    mu = tl.sum(z, 0) * (1.0 / N)
    d = tl.where(m, z - mu, 0.0)
    rstd = tl.math.rsqrt(tl.sum(d * d, 0) * (1.0 / N) + EPS)
    xh = d * rstd
    gxh = tl.where(m, (gamma * xh + beta - target) * gamma, 0.0)
    return tl.where(m, (gxh * N - tl.sum(gxh, 0) - xh * tl.sum(gxh * xh, 0)) * (rstd * (1.0 / N)), 0.0)


@triton.jit
def load_token_inputs(q_ptr, k_ptr, v_ptr, eta_ptr, c_ptr, gamma_ptr, beta_ptr, pos, i_b, i_h, o_d, m_d,
                      stride_qb, stride_qh, stride_kb, stride_kh, stride_vb, stride_vh, stride_eb, stride_eh,
                      D: tl.constexpr):
    """This token's q, k, v [BLOCK_D] and eta of (sequence i_b, head i_h), the coefficient c_pos, and
    the head's inner LayerNorm gamma, beta [BLOCK_D]; all in float32 (the kernels' arithmetic)."""
    b_q = tl.load(q_ptr + i_b * stride_qb + i_h * stride_qh + o_d, mask=m_d, other=0.0).to(tl.float32)
    b_k = tl.load(k_ptr + i_b * stride_kb + i_h * stride_kh + o_d, mask=m_d, other=0.0).to(tl.float32)
    b_v = tl.load(v_ptr + i_b * stride_vb + i_h * stride_vh + o_d, mask=m_d, other=0.0).to(tl.float32)
    eta = tl.load(eta_ptr + i_b * stride_eb + i_h * stride_eh).to(tl.float32)
    c_i = tl.load(c_ptr + pos).to(tl.float32)
    gam = tl.load(gamma_ptr + i_h * D + o_d, mask=m_d, other=0.0).to(tl.float32)
    bet = tl.load(beta_ptr + i_h * D + o_d, mask=m_d, other=0.0).to(tl.float32)
    return b_q, b_k, b_v, eta, c_i, gam, bet


# ---------------------------------------------------------------- the end-of-mini-batch update
@triton.jit
def update_tile(p_w, p_ra, p_rb, o_r, m_r, o_c, m_c, o_s, m_s, stride_w, stride_a, stride_b, scale,
                MB: tl.constexpr, DOT: tl.constexpr, F16_MMA: tl.constexpr = False):
    """W[o_r, o_c] -= scale sum_s A[s, o_r]^T B[s, o_c]: the dual form's rank-b state update of one tile.

    A, B are the mini-batch's cache rows (all b of them: the caller stores this token's row and
    puts a barrier first). DOT: one tl.dot over the rows (with F16_MMA fp16 rows as they are, else
    float32 through 3xTF32: error ~1e-7 of the update), else a loop of b rank-1 updates on the CUDA cores."""
    m = m_r[:, None] & m_c[None, :]
    p = p_w + o_r[:, None] * stride_w + o_c[None, :]
    if DOT:
        b_a = tl.load(p_ra + o_s[:, None] * stride_a + o_r[None, :], mask=m_s[:, None] & m_r[None, :], other=0.0)
        b_b = tl.load(p_rb + o_s[:, None] * stride_b + o_c[None, :], mask=m_s[:, None] & m_c[None, :], other=0.0)
        if F16_MMA and p_ra.dtype.element_ty == tl.float16:
            # fp16 rows (the cache dtype): their products are exact in float32, so one MMA pass with
            # float32 accumulation is as accurate as the CUDA-core loop, at a third of tf32x3's work.
            acc = tl.dot(tl.trans(b_a), b_b)
        else:
            acc = tl.dot(tl.trans(b_a.to(tl.float32)), b_b.to(tl.float32), input_precision="tf32x3")
    else:
        acc = tl.zeros(m.shape, dtype=tl.float32)
        for s in range(MB):
            r_a = tl.load(p_ra + s * stride_a + o_r, mask=m_r, other=0.0).to(tl.float32)
            r_b = tl.load(p_rb + s * stride_b + o_c, mask=m_c, other=0.0).to(tl.float32)
            acc += r_a[:, None] * r_b[None, :]
    b_w = tl.load(p, mask=m, other=0.0).to(tl.float32)
    tl.store(p, rne(b_w - acc * scale, p_w.dtype.element_ty), mask=m)


@triton.jit
def update_bias(p_b, p_rows, o_c, m_c, o_s, m_s, stride, scale):
    """b[o_c] -= scale sum_s rows[s, o_c] over the mini-batch's cache rows."""
    b_r = tl.load(p_rows + o_s[:, None] * stride + o_c[None, :], mask=m_s[:, None] & m_c[None, :], other=0.0)
    b = tl.load(p_b + o_c, mask=m_c, other=0.0).to(tl.float32)
    tl.store(p_b + o_c, rne(b - tl.sum(b_r.to(tl.float32), 0) * scale, p_b.dtype.element_ty), mask=m_c)


# ---------------------------------------------------------------- host side
def check_kernel_inputs(name, q, k, v, eta, c, gamma, beta, state, cache, mlp: bool, dual: bool) -> None:
    """Everything a Triton TTT decode kernel needs of its arguments, checked before the launch."""
    want = DualCache if dual else PrimalCache
    if not isinstance(cache, want):
        raise UserError(f"{name}: needs a {want.__name__}, got {type(cache).__name__}")
    check_decode_inputs(q, k, v, eta, c, gamma, beta, state, cache, mlp)
    B, H, f = q.shape
    b = cache.mini_batch_size
    if not (MIN_HEAD_DIM <= f <= MAX_HEAD_DIM):
        raise UserError(f"{name}: head dim {f} is not supported by the Triton kernel (it takes "
                        f"{MIN_HEAD_DIM}..{MAX_HEAD_DIM}); use impl='naive' or a model with head_dim <= {MAX_HEAD_DIM}")
    if not (2 <= b <= MAX_MINI_BATCH):
        raise UserError(f"{name}: mini-batch size {b} is not supported by the Triton kernel (it takes "
                        f"2..{MAX_MINI_BATCH}); use impl='naive'")
    if q.dtype not in ACT_DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        raise UserError(f"{name}: q, k, v must share one dtype of float16, bfloat16, float32 (got {q.dtype}, "
                        f"{k.dtype}, {v.dtype}); float64 runs with impl='naive'")
    tensors = {**{f"state.{n}": t for n, t in state.tensors().items()},
               **{f"cache.{n}": t for n, t in cache.tensors().items() if n != "pos"}}
    s_dtype = state.W1.dtype
    for n, t in tensors.items():
        if t.dtype != s_dtype or s_dtype not in STATE_DTYPES:
            raise UserError(f"{name}: state and cache must share one dtype of float16, bfloat16, float32 "
                            f"({n} is {t.dtype}, state.W1 {s_dtype}); float64 runs with impl='naive'")
    devices = {t.device for t in (q, k, v, eta, c, gamma, beta, cache.pos, *tensors.values())}
    if len(devices) != 1:
        raise UserError(f"{name}: all tensors must be on one device, got {sorted(map(str, devices))}")
    if q.device.type != "cuda" and not interpreting():
        raise UserError(f"{name}: the Triton kernels need a CUDA GPU; on CPU set TRITON_INTERPRET=1 (slow, for "
                        f"tests) or use impl='naive'")
    # In-place updates land in these exact tensors: never copy, refuse instead.
    for n, t in tensors.items():
        assert t.is_contiguous(), f"{name}: {n} must be contiguous (it is updated in place), strides {t.stride()}"
    for n, t in (("q", q), ("k", k), ("v", v)):
        assert t.stride(2) == 1, f"{name}: {n} must be contiguous along the head dim, strides {t.stride()}"
    assert gamma.is_contiguous() and beta.is_contiguous() and c.is_contiguous(), f"{name}: gamma, beta, c contiguous"
    assert cache.pos.numel() == 1 and cache.pos.dtype == torch.int64, f"{name}: cache.pos must be a [1] int64 tensor"


def advance_pos(pos: torch.Tensor, mini_batch_size: int) -> None:
    """pos <- (pos + 1) mod b on the device (no host sync)."""
    pos.copy_((pos + 1) % mini_batch_size)


def launch_options(cfg: dict) -> dict:
    """The Triton launch options of a configuration dict (num_warps, and maxnreg when set)."""
    return {k: cfg[k] for k in ("num_warps", "maxnreg") if cfg.get(k)}


def pow2(n: int) -> int:
    return triton.next_power_of_2(n)
