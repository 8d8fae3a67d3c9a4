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
def load_pending(p_row, o_f, m_f):
    """Columns o_f of the pending g1 row G1_c (ttt_mlp/naive.py, DEFER_W1), float32. Loaded with the chunk's W1 and
    W2 tiles, before their products: loaded where less_pending uses it, its round trip sat on each chunk's chain and
    ptxas sank the W2 loads after the W1 products (sm_90 SASS, seventeenth session; 2-6% slower on an H100)."""
    return tl.load(p_row + o_f, mask=m_f, other=0.0).to(tl.float32)


@triton.jit
def less_pending(z1k, z1q0, g_c, pend_k, pend_q):
    """Z1 of k and q of a chunk less the pending term of W1's update (ttt_mlp/naive.py, DEFER_W1): W1 in memory
    is the inner model's plus c_{b-1} k_c^T G1_c, so x W1 is off by pend_x G1_c, pend_x = c_{b-1} x . k_c.
    g_c: the chunk's columns of G1_c (load_pending)."""
    return z1k - pend_k * g_c, z1q0 - pend_q * g_c


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
def prefetch_chunk(p_w1, p_w2, o_d, m_d, o_f0, ci, FH: tl.constexpr, D: tl.constexpr, BLOCK_F: tl.constexpr,
                   NUM_CHUNKS: tl.constexpr):
    """tc.prefetch_l2 of chunk ci's W1 columns and W2 rows (nothing when ci is past the last chunk)."""
    o_f = ci * BLOCK_F + o_f0
    ok = ci < NUM_CHUNKS
    tc.prefetch_rows_l2(p_w1, o_d, m_d & ok, ci * BLOCK_F, FH, BLOCK_F, BLOCK_F)
    tc.prefetch_rows_l2(p_w2, o_f, (o_f < FH) & ok, 0, D, D, o_d.shape[0])


@triton.jit
def z2k_chunked(p_w1, p_b1, p_w2, p_z1, b_b2, b_k, b_q, o_d, m_d, o_f0, FH: tl.constexpr, D: tl.constexpr,
                BLOCK_F: tl.constexpr, NUM_CHUNKS: tl.constexpr, Z1_SCRATCH: tl.constexpr,
                EVICT_W1: tl.constexpr, EVICT_W2: tl.constexpr, PREFETCH: tl.constexpr, p_pend, pend_k, pend_q,
                PENDING: tl.constexpr):
    """Pass A over F in BLOCK_F chunks: Z2k = tc.gelu(k W1 + b1) W2 + b2 [BD]. Each chunk's tiles are loaded
    when it is reached: other resident programs hide the latency, and a second chunk requested ahead
    would cost registers, hence residency (exp/NOTES.md, "H200 kernel sweeps"). With Z1_SCRATCH,
    k W1 + b1 and q W1 + b1 are also stored at p_z1 (F floats each) for pass B. EVICT_W1 / EVICT_W2: L2
    hints for the tiles (pass B reads W2, and the primal form W1 too, a second time). PREFETCH > 0: the
    tiles of the chunk that many ahead are requested into L2 (tc.prefetch_l2, no registers held), so that
    its loads wait on L2 rather than DRAM; chunks 0 .. PREFETCH-1 are the caller's to request. PENDING (the
    dual form's DEFER_W1): Z1 of k and q less the pending term (less_pending; p_pend its g1 row), before
    Z2k and the scratch use them."""
    z2k = b_b2
    for ci in range(NUM_CHUNKS):
        o_f = ci * BLOCK_F + o_f0
        m_f = o_f < FH
        if PREFETCH > 0:
            prefetch_chunk(p_w1, p_w2, o_d, m_d, o_f0, ci + PREFETCH, FH, D, BLOCK_F, NUM_CHUNKS)
        c_w1 = load_w1(p_w1, o_d, m_d, o_f, m_f, FH, EVICT_W1)
        c_w2 = load_w2(p_w2, o_d, m_d, o_f, m_f, D, EVICT_W2)
        if PENDING:
            g_c = load_pending(p_pend, o_f, m_f)
        z1k, z1q0 = w1_products(c_w1, p_b1, o_f, m_f, b_k, b_q)
        if PENDING:
            z1k, z1q0 = less_pending(z1k, z1q0, g_c, pend_k, pend_q)
        if Z1_SCRATCH:
            tl.store(p_z1 + o_f, z1k, mask=m_f)
            tl.store(p_z1 + FH + o_f, z1q0, mask=m_f)
        z2k += tl.sum(tc.gelu(z1k)[:, None] * c_w2.to(tl.float32), 0)
    return z2k
