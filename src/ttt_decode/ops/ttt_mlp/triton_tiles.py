"""TTT-MLP (M2) tile code shared by the dual-form (triton_decode.py) and primal-form (triton_primal.py) kernels.

Both walk the hidden dimension F in BLOCK_F-column chunks on the CUDA cores: `load_w1` / `load_w2` load a
chunk of W1 [f, BLOCK_F] / W2 [BLOCK_F, f], `w1_products` gives k W1 + b1 and q W1 + b1 of a chunk, and
`z2k_chunked` is pass A (Z2k = gelu(k W1 + b1) W2 + b2 over all chunks), which both forms need before
g2 exists.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ttt_decode.ops import ttt_triton_common as tc


@triton.jit
def w1_products(b_w1, p_b1, o_f, m_f, b_k, b_q):
    """k W1 + b1 and q W1 + b1 for a W1 tile [BD, BF] (columns o_f)."""
    b_b1 = tl.load(p_b1 + o_f, mask=m_f, other=0.0).to(tl.float32)
    b_w1 = b_w1.to(tl.float32)
    return tl.sum(b_w1 * b_k[:, None], 0) + b_b1, tl.sum(b_w1 * b_q[:, None], 0) + b_b1


@triton.jit
def load_w1(p_w1, o_d, m_d, o_f, m_f, FH: tl.constexpr, EVICT: tl.constexpr = ""):
    """W1 columns o_f [BD, BF]; EVICT: the L2 eviction hint ("evict_last" for a tile read again soon,
    "evict_first" for its last read), "" for none."""
    return tl.load(p_w1 + o_d[:, None] * FH + o_f[None, :], mask=m_d[:, None] & m_f[None, :], other=0.0,
                   eviction_policy=EVICT)


@triton.jit
def load_w2(p_w2, o_d, m_d, o_f, m_f, D: tl.constexpr, EVICT: tl.constexpr = ""):
    """W2 rows o_f [BF, BD]; EVICT as load_w1."""
    return tl.load(p_w2 + o_f[:, None] * D + o_d[None, :], mask=m_f[:, None] & m_d[None, :], other=0.0,
                   eviction_policy=EVICT)


@triton.jit
def z2k_chunked(p_w1, p_b1, p_w2, p_z1, b_b2, b_k, b_q, o_d, m_d, o_f0, FH: tl.constexpr, D: tl.constexpr,
                BLOCK_F: tl.constexpr, NUM_CHUNKS: tl.constexpr, Z1_SCRATCH: tl.constexpr,
                EVICT_W1: tl.constexpr = "", EVICT_W2: tl.constexpr = ""):
    """Pass A over F in BLOCK_F chunks: Z2k = tc.gelu(k W1 + b1) W2 + b2 [BD]. Each chunk's tiles are loaded
    when it is reached: other resident programs hide the latency, and a second chunk requested ahead
    would cost registers, hence residency (exp/NOTES.md, "H200 kernel sweeps"). With Z1_SCRATCH,
    k W1 + b1 and q W1 + b1 are also stored at p_z1 (F floats each) for pass B. EVICT_W1 / EVICT_W2: L2
    hints for the tiles (pass B reads W2, and the primal form W1 too, a second time)."""
    z2k = b_b2
    for ci in range(NUM_CHUNKS):
        o_f = ci * BLOCK_F + o_f0
        m_f = o_f < FH
        c_w1 = load_w1(p_w1, o_d, m_d, o_f, m_f, FH, EVICT_W1)
        c_w2 = load_w2(p_w2, o_d, m_d, o_f, m_f, D, EVICT_W2)
        z1k, z1q0 = w1_products(c_w1, p_b1, o_f, m_f, b_k, b_q)
        if Z1_SCRATCH:
            tl.store(p_z1 + o_f, z1k, mask=m_f)
            tl.store(p_z1 + FH + o_f, z1q0, mask=m_f)
        z2k += tl.sum(tc.gelu(z1k)[:, None] * c_w2.to(tl.float32), 0)
    return z2k


# ---------------------------------------------------------------- tensor-core matrix-vector products
# A float32 vector x times an fp16 W tile on the tensor cores, as accurate as the float32 CUDA-core products:
# x is split into two fp16 rows (hi = fp16(x), lo = fp16(x - hi): 22 bits of x), the MMA's products of those
# rows with W are exact and accumulate in float32. The rows are the A operand of a [16, K] x [K, N] tl.dot
# (16 rows: the MMA's minimum), so that the result rows come out in the accumulator layout, whose two-row
# sum (`row_sum`) is the product, and a vector computed from it becomes the next MMA's A operand without
# leaving the registers. Only rows 0 and 1 are summed; the other rows of the operand are never read. A vector
# of unknown scale is split as s x (pow2_scale) and its products multiplied by 1 / s.
# fp16 only: the Triton interpreter (the CPU tests) computes bf16 dots wrongly, so a bf16 path (three rows)
# could not be tested here.
@triton.jit
def split_rows(x):
    """float32 x [N] -> [16, N] fp16: row 0 fp16(x), the others fp16(x - row 0)."""
    o_r = tl.arange(0, 16)[:, None]
    hi = x.to(tl.float16)
    return tl.where(o_r == 0, hi[None, :], (x - hi.to(tl.float32)).to(tl.float16)[None, :])


@triton.jit
def pow2_scale(x):
    """(s, 1 / s) for a vector x: s a power of two bringing max |x| into [64, 128), so that the low row of
    s x is not subnormal (fp16 subnormals below 6.1e-5 would cost it bits)."""
    e = tl.minimum(tl.maximum(tl.floor(tl.log2(tl.max(tl.abs(x), 0) + 1e-30)), -100.0), 100.0)
    return tl.exp2(6.0 - e), tl.exp2(e - 6.0)


@triton.jit
def row_sum(acc, R0: tl.constexpr):
    """acc[R0] + acc[R0 + 1] of a [16, N] accumulator -> [N]."""
    o_r = tl.arange(0, 16)[:, None]
    return tl.sum(tl.where((o_r == R0) | (o_r == R0 + 1), acc, 0.0), 0)


@triton.jit
def put_split(t, x, R0: tl.constexpr):
    """t [16, N] fp16 with rows R0 and R0 + 1 replaced by the split of float32 x [N]."""
    o_r = tl.arange(0, 16)[:, None]
    hi = x.to(tl.float16)
    return tl.where(o_r == R0, hi[None, :], tl.where(o_r == R0 + 1, (x - hi.to(tl.float32)).to(tl.float16)[None, :], t))


@triton.jit
def z2k_chunked_tc(p_w1, p_b1, p_w2, p_z1, b_b2, b_k, b_q, o_d, m_d, o_f0, FH: tl.constexpr, D: tl.constexpr,
                   BLOCK_D: tl.constexpr, BLOCK_F: tl.constexpr, NUM_CHUNKS: tl.constexpr,
                   EVICT_W1: tl.constexpr = "", EVICT_W2: tl.constexpr = ""):
    """z2k_chunked with Z1_SCRATCH on the tensor cores (fp16 W): per chunk, k and q split into rows 0-1 and 2-3
    times the W1 columns give k W1 and q W1 in the accumulator's rows, and gelu(k W1 + b1) split into rows
    (the A operand, from those registers) times the W2 rows accumulates X2k W2 over the chunks. k and q are
    scaled (pow2_scale); gelu's outputs are not (one scale has to hold for every chunk, and their low rows'
    lost bits are absolute errors below 1e-7 of a sum of O(1) terms)."""
    k_s, k_inv = pow2_scale(b_k)
    q_s, q_inv = pow2_scale(b_q)
    kq = put_split(put_split(tl.zeros([16, BLOCK_D], dtype=tl.float16), b_k * k_s, 0), b_q * q_s, 2)  # [16, BD]
    acc = tl.zeros([16, BLOCK_D], dtype=tl.float32)  # rows 0-1: X2k W2 over the chunks so far
    for ci in range(NUM_CHUNKS):
        o_f = ci * BLOCK_F + o_f0
        m_f = o_f < FH
        c_w1 = load_w1(p_w1, o_d, m_d, o_f, m_f, FH, EVICT_W1)  # [BD, BF]
        c_w2 = load_w2(p_w2, o_d, m_d, o_f, m_f, D, EVICT_W2)  # [BF, BD]
        z = tl.dot(kq, c_w1)  # [16, BF]
        b1 = tl.load(p_b1 + o_f, mask=m_f, other=0.0).to(tl.float32)
        z1k = row_sum(z, 0) * k_inv + b1
        z1q0 = row_sum(z, 2) * q_inv + b1
        tl.store(p_z1 + o_f, z1k, mask=m_f)
        tl.store(p_z1 + FH + o_f, z1q0, mask=m_f)
        acc = tl.dot(split_rows(tc.gelu(z1k)), c_w2, acc)
    return row_sum(acc, 0) + b_b2

