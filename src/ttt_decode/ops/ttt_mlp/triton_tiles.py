"""TTT-MLP (M2) tile code shared by the dual-form (triton_decode.py) and primal-form (triton_primal.py) kernels.

Two families, one per kernel design (docs/DESIGN.md section 11):
- whole-head tiles (hidden F <= MAX_WHOLE_F, i.e. head dim <= 64): `load_w`, `forward_grads` on W1 [f, F]
  and W2 [F, f] held whole, their products on the tensor cores (ttt_triton_common.vec_mat);
- F-chunks (larger heads): `load_w1`, `load_w2`, `w1_products`, `z2k_chunked`, walking F in
  BLOCK_F-column chunks on the CUDA cores.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ttt_decode.ops.ttt_triton_common import gelu, gelu_and_grad, ln_fused_l2_bwd, vec2_mat, vec_mat

# Hidden sizes whose W1 and W2 are held whole (and staged in shared memory by the persistent kernels):
# 2 x 32 KB in fp16 at F = 256; a larger head would not leave room for a second pipeline stage.
MAX_WHOLE_F = 256


# ---------------------------------------------------------------- whole-head tiles
@triton.jit
def load_w(w1_ptr, w2_ptr, b1_ptr, b2_ptr, it, o_d, m_d, o_f, m_f, D: tl.constexpr, FH: tl.constexpr):
    """Item it's W1 [BD, BF], W2 [BF, BD] (state dtype) and b1 [BF], b2 [BD] (float32)."""
    b_w1 = tl.load(w1_ptr + it * (D * FH) + o_d[:, None] * FH + o_f[None, :], mask=m_d[:, None] & m_f[None, :],
                   other=0.0)
    b_w2 = tl.load(w2_ptr + it * (FH * D) + o_f[:, None] * D + o_d[None, :], mask=m_f[:, None] & m_d[None, :],
                   other=0.0)
    b_b1 = tl.load(b1_ptr + it * FH + o_f, mask=m_f, other=0.0).to(tl.float32)
    b_b2 = tl.load(b2_ptr + it * D + o_d, mask=m_d, other=0.0).to(tl.float32)
    return b_w1, b_w2, b_b1, b_b2


@triton.jit
def forward_grads(b_w1, b_w2, b_b1, b_b2, b_q, b_k, b_v, gam, bet, m_d, D: tl.constexpr, EPS: tl.constexpr,
                  EMULATE_BF16: tl.constexpr):
    """The token's pass through the mini-batch start state, DESIGN section 4:
    Z1q = q W1 + b1, Z1k = k W1 + b1, X2k = gelu(Z1k), g2 = d/dZ2 1/2 ||LN(X2k W2 + b2) - (v - k)||^2,
    g1 = (g2 W2^T) gelu'(Z1k). Returns (Z1q, X2k [BF], g2 [BD], g1 [BF]), float32, not yet scaled by eta."""
    z1k, z1q = vec2_mat(b_k, b_q, b_w1, EMULATE_BF16)
    z1k += b_b1
    z1q += b_b1
    x2k, dx2k = gelu_and_grad(z1k)
    z2k = vec_mat(x2k, b_w2, EMULATE_BF16) + b_b2
    g2 = ln_fused_l2_bwd(z2k, b_v - b_k, gam, bet, m_d, D, EPS)
    g1 = vec_mat(g2, tl.trans(b_w2), EMULATE_BF16) * dx2k
    return z1q, x2k, g2, g1


# ---------------------------------------------------------------- F-chunks (large heads)
@triton.jit
def w1_products(b_w1, p_b1, o_f, m_f, b_k, b_q):
    """k W1 + b1 and q W1 + b1 for a W1 tile [BD, BF] (columns o_f)."""
    b_b1 = tl.load(p_b1 + o_f, mask=m_f, other=0.0).to(tl.float32)
    b_w1 = b_w1.to(tl.float32)
    return tl.sum(b_w1 * b_k[:, None], 0) + b_b1, tl.sum(b_w1 * b_q[:, None], 0) + b_b1


@triton.jit
def load_w1(p_w1, o_d, m_d, o_f, m_f, FH: tl.constexpr):
    return tl.load(p_w1 + o_d[:, None] * FH + o_f[None, :], mask=m_d[:, None] & m_f[None, :], other=0.0)


@triton.jit
def load_w2(p_w2, o_d, m_d, o_f, m_f, D: tl.constexpr):
    return tl.load(p_w2 + o_f[:, None] * D + o_d[None, :], mask=m_f[:, None] & m_d[None, :], other=0.0)


@triton.jit
def z2k_chunked(p_w1, p_b1, p_w2, p_z1, b_b2, b_k, b_q, o_d, m_d, o_f0, FH: tl.constexpr, D: tl.constexpr,
                BLOCK_F: tl.constexpr, NUM_CHUNKS: tl.constexpr, Z1_SCRATCH: tl.constexpr, PREFETCH: tl.constexpr = True):
    """Pass A over F in BLOCK_F chunks: Z2k = gelu(k W1 + b1) W2 + b2 [BD]. PREFETCH: the next chunk's W1
    and W2 tiles are requested before this chunk is computed (latency hidden inside the program, at the
    price of registers for two chunks); without, other resident programs hide it. With Z1_SCRATCH, k W1 + b1
    and q W1 + b1 are also stored at p_z1 (F floats each) for pass B."""
    z2k = b_b2
    n_w1 = load_w1(p_w1, o_d, m_d, o_f0, o_f0 < FH, FH)
    n_w2 = load_w2(p_w2, o_d, m_d, o_f0, o_f0 < FH, D)
    for ci in range(NUM_CHUNKS):
        o_f = ci * BLOCK_F + o_f0
        m_f = o_f < FH
        if PREFETCH:
            c_w1, c_w2 = n_w1, n_w2
            m_n = (o_f + BLOCK_F) < FH
            n_w1 = load_w1(p_w1, o_d, m_d, o_f + BLOCK_F, m_n, FH)
            n_w2 = load_w2(p_w2, o_d, m_d, o_f + BLOCK_F, m_n, D)
        else:
            c_w1 = load_w1(p_w1, o_d, m_d, o_f, m_f, FH)
            c_w2 = load_w2(p_w2, o_d, m_d, o_f, m_f, D)
        z1k, z1q0 = w1_products(c_w1, p_b1, o_f, m_f, b_k, b_q)
        if Z1_SCRATCH:
            tl.store(p_z1 + o_f, z1k, mask=m_f)
            tl.store(p_z1 + FH + o_f, z1q0, mask=m_f)
        z2k += tl.sum(gelu(z1k)[:, None] * c_w2.to(tl.float32), 0)
    return z2k
