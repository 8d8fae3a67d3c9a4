"""Triton primal-form decode step of TTT-MLP (M2), the published kernels' way; reference naive.decode_step_primal.

The baseline the dual form (triton_decode.py) is measured against: the same chunked F walk and float32
arithmetic, but the mini-batch's gradients are kept as full matrices. Per (sequence, head) item, i = pos:
    Z1k = k W1 + b1, X2k = gelu(Z1k), g2 = eta dl/dZ2 (loss on LN(X2k W2 + b2)), g1 = eta (dl/dZ2 W2^T) gelu'(Z1k)
    W1_grad += k^T g1, b1_grad += g1, W2_grad += X2k^T g2, b2_grad += g2
    W_bar = W - c_i W_grad (each of W1, b1, W2, b2);  out = q + LN(gelu(q W1_bar + b1_bar) W2_bar + b2_bar)
    i < b-1: gradients written;  i = b-1: W <- W_bar, gradients written as 0.

Compulsory bytes per call (s = state item size, a = activation item size), per item:
    state and gradients read, gradients written: 3 (2 f F + F + f) s; at i = b-1 the state written;
    q, k, v, out 4 f a, eta 4 bytes. Averaged: ops.ttt_common.inner_step_cost(mlp=True, form="primal"),
    3.06 state-sized transfers; ttt-1b (H 32, f 64, b 16), fp16 state, B = 512: 3.33 GB, floor 780 us at
    4271 GB/s.
FLOPs per item: 10 f F (k W1, X2k W2, g2 W2^T, q W1, X2' W2) + 8 f F (the two rank-1 gradient updates
  and W_bar for W1 and W2).
Grid: (B H,), one program per item, 2 warps at f = 64. F is walked in BLOCK_F chunks twice (W read
  twice, the second time from L2: pass A asks L2 to keep W1 and W2, pass B to drop what it reads),
  each chunk's four tiles loaded when it is reached (no chunk requested ahead: H200 sweeps,
  exp/NOTES.md); a hidden size that one chunk holds (F <= BLOCK_F) is loaded whole at once.
Mutates: cache.W1_grad, b1_grad, W2_grad, b2_grad every call; state W1, b1, W2, b2 at pos = b-1.
  pos is read, never moved (advance=True moves it after the kernel).
Arithmetic in float32; a hand-picked configuration (`primal_config`), no autotune.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ttt_decode.ops import ttt_triton_common as tc
from ttt_decode.ops.kernel_op import step_op
from ttt_decode.ops.ttt_common import TTT_NORM_EPS, PrimalCache, TTTState
from ttt_decode.ops.ttt_mlp import triton_tiles as tiles


@triton.jit
def _chunk_b(b_w2, b_gw1, b_gw2, x2k, dx2k, z1q0, g2, g2e, eta, c_i, b_q, b_k, last, p_w1, p_b1, p_w2, p_b1g,
             p_w1g, p_w2g, o_d, m_d, o_f, m_f, D: tl.constexpr, FH: tl.constexpr):
    """With g2 known: this chunk's gradients (accumulated and written back), its W_bar, and X2' W2_bar."""
    b_w2f = b_w2.to(tl.float32)  # [BF, BD]
    g1e = tl.sum(b_w2f * g2[None, :], 1) * dx2k * eta
    m_w1 = m_d[:, None] & m_f[None, :]
    m_w2 = m_f[:, None] & m_d[None, :]
    o_w1 = o_d[:, None] * FH + o_f[None, :]
    o_w2 = o_f[:, None] * D + o_d[None, :]
    gw1 = b_gw1.to(tl.float32) + b_k[:, None] * g1e[None, :]  # [BD, BF]
    gb1 = tl.load(p_b1g + o_f, mask=m_f, other=0.0).to(tl.float32) + g1e
    x2q = tc.gelu(z1q0 - c_i * (tl.sum(gw1 * b_q[:, None], 0) + gb1))
    gw2 = b_gw2.to(tl.float32) + x2k[:, None] * g2e[None, :]  # [BF, BD]
    w2_bar = b_w2f - c_i * gw2
    z2q = tl.sum(x2q[:, None] * w2_bar, 0)  # [BD]
    # Gradients restart at the end of the mini-batch, where W_bar becomes the state.
    tl.store(p_w1g + o_w1, tc.rne(tl.where(last, 0.0, gw1), p_w1g.dtype.element_ty), mask=m_w1)
    tl.store(p_b1g + o_f, tc.rne(tl.where(last, 0.0, gb1), p_b1g.dtype.element_ty), mask=m_f)
    tl.store(p_w2g + o_w2, tc.rne(tl.where(last, 0.0, gw2), p_w2g.dtype.element_ty), mask=m_w2)
    tl.store(p_w2 + o_w2, tc.rne(w2_bar, p_w2.dtype.element_ty), mask=m_w2 & last)
    # W1 is not held past pass A: at the last position it is read again (L2) for W1_bar.
    b_w1 = tl.load(p_w1 + o_w1, mask=m_w1 & last, other=0.0).to(tl.float32)
    tl.store(p_w1 + o_w1, tc.rne(b_w1 - c_i * gw1, p_w1.dtype.element_ty), mask=m_w1 & last)
    b_b1 = tl.load(p_b1 + o_f, mask=m_f & last, other=0.0).to(tl.float32)
    tl.store(p_b1 + o_f, tc.rne(b_b1 - c_i * gb1, p_b1.dtype.element_ty), mask=m_f & last)
    return z2q



@triton.jit
def _m2_primal_kernel(
    q_ptr, k_ptr, v_ptr, eta_ptr, c_ptr, gamma_ptr, beta_ptr, pos_ptr,
    w1_ptr, b1_ptr, w2_ptr, b2_ptr, gw1_ptr, gb1_ptr, gw2_ptr, gb2_ptr, out_ptr,
    H, stride_qb, stride_qh, stride_kb, stride_kh, stride_vb, stride_vh, stride_eb, stride_eh,
    D: tl.constexpr, FH: tl.constexpr, MB: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_F: tl.constexpr,
    EPS: tl.constexpr, L2_HINTS: tl.constexpr, REVERSE_B: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    i_b = pid // H
    i_h = pid % H
    ONE_CHUNK: tl.constexpr = BLOCK_F >= FH
    NUM_CHUNKS: tl.constexpr = (FH + BLOCK_F - 1) // BLOCK_F
    o_d = tl.arange(0, BLOCK_D)
    m_d = o_d < D
    o_f0 = tl.arange(0, BLOCK_F)
    pos = tl.load(pos_ptr).to(tl.int32)
    last = pos == MB - 1

    p_w1 = w1_ptr + pid * (D * FH)
    p_b1 = b1_ptr + pid * FH
    p_w2 = w2_ptr + pid * (FH * D)
    p_b2 = b2_ptr + pid * D
    p_w1g = gw1_ptr + pid * (D * FH)
    p_b1g = gb1_ptr + pid * FH
    p_w2g = gw2_ptr + pid * (FH * D)
    p_b2g = gb2_ptr + pid * D

    if ONE_CHUNK:
        # Every tile requested at once (one memory latency), held together: small heads only.
        m_f = o_f0 < FH
        b_w1 = tiles.load_w1(p_w1, o_d, m_d, o_f0, m_f, FH)
        b_w2 = tiles.load_w2(p_w2, o_d, m_d, o_f0, m_f, D)
        b_gw1 = tiles.load_w1(p_w1g, o_d, m_d, o_f0, m_f, FH)
        b_gw2 = tiles.load_w2(p_w2g, o_d, m_d, o_f0, m_f, D)
    b_q, b_k, b_v, eta, c_i, gam, bet = tc.load_token_inputs(
        q_ptr, k_ptr, v_ptr, eta_ptr, c_ptr, gamma_ptr, beta_ptr, pos, i_b, i_h, o_d, m_d,
        stride_qb, stride_qh, stride_kb, stride_kh, stride_vb, stride_vh, stride_eb, stride_eh, D)  # [BD] each
    b_b2 = tl.load(p_b2 + o_d, mask=m_d, other=0.0).to(tl.float32)

    # Pass A: Z2k = tc.gelu(k W1 + b1) W2 + b2 at the mini-batch start state.
    if ONE_CHUNK:
        z1k, z1q0 = tiles.w1_products(b_w1, p_b1, o_f0, m_f, b_k, b_q)
        x2k, dx2k = tc.gelu_and_grad(z1k)
        z2k = tl.sum(x2k[:, None] * b_w2.to(tl.float32), 0) + b_b2
    else:
        # p_z1 unused without the scratch (p_b1 stands in).
        # L2_HINTS: pass A's W1, W2 are read again in pass B (evict last there), everything in pass B
        # for the last time (evict first).
        EV_ONCE: tl.constexpr = "evict_first" if L2_HINTS else ""
        EV_AGAIN: tl.constexpr = "evict_last" if L2_HINTS else ""
        z2k = tiles.z2k_chunked(p_w1, p_b1, p_w2, p_b1, b_b2, b_k, b_q, o_d, m_d, o_f0, FH, D, BLOCK_F, NUM_CHUNKS,
                                False, EV_AGAIN, EV_AGAIN, 0, p_b1, 0.0, 0.0, False)
    g2 = tc.ln_fused_l2_bwd(z2k, b_v - b_k, gam, bet, m_d, D, EPS)  # [BD], dl/dZ2
    g2e = g2 * eta

    # Pass B: gradients, W_bar and the output's products, chunk by chunk.
    if ONE_CHUNK:
        z2q = _chunk_b(b_w2, b_gw1, b_gw2, x2k, dx2k, z1q0, g2, g2e, eta, c_i, b_q, b_k, last, p_w1, p_b1, p_w2,
                       p_b1g, p_w1g, p_w2g, o_d, m_d, o_f0, m_f, D, FH)
    else:
        z2q = tl.zeros([BLOCK_D], dtype=tl.float32)
        for cj in range(NUM_CHUNKS):
            # REVERSE_B: the chunks pass A read last come first, while they are most likely still in L2.
            ci = NUM_CHUNKS - 1 - cj if REVERSE_B else cj
            o_f = ci * BLOCK_F + o_f0
            m_f = o_f < FH
            c_w1 = tiles.load_w1(p_w1, o_d, m_d, o_f, m_f, FH, EV_ONCE)
            c_w2 = tiles.load_w2(p_w2, o_d, m_d, o_f, m_f, D, EV_ONCE)
            c_gw1 = tiles.load_w1(p_w1g, o_d, m_d, o_f, m_f, FH, EV_ONCE)
            c_gw2 = tiles.load_w2(p_w2g, o_d, m_d, o_f, m_f, D, EV_ONCE)
            z1k, z1q0 = tiles.w1_products(c_w1, p_b1, o_f, m_f, b_k, b_q)
            x2k, dx2k = tc.gelu_and_grad(z1k)
            z2q += _chunk_b(c_w2, c_gw1, c_gw2, x2k, dx2k, z1q0, g2, g2e, eta, c_i, b_q, b_k, last, p_w1, p_b1, p_w2,
                            p_b1g, p_w1g, p_w2g, o_d, m_d, o_f, m_f, D, FH)

    gb2 = tl.load(p_b2g + o_d, mask=m_d, other=0.0).to(tl.float32) + g2e
    b2_bar = b_b2 - c_i * gb2
    out = b_q + tc.ln_fwd(z2q + b2_bar, gam, bet, m_d, D, EPS)
    tl.store(out_ptr + pid * D + o_d, tc.rne(out, out_ptr.dtype.element_ty), mask=m_d)
    tl.store(p_b2g + o_d, tc.rne(tl.where(last, 0.0, gb2), gb2_ptr.dtype.element_ty), mask=m_d)
    tl.store(p_b2 + o_d, tc.rne(b2_bar, b2_ptr.dtype.element_ty), mask=m_d & last)


def primal_config(batch: int, head_dim: int, state_dtype: torch.dtype) -> dict:
    """Hand-picked launch configuration (no autotune: the state is updated in place); one for every batch.

    H200, ttt-1b shapes, fp16 state (exp/NOTES.md, "H200 kernel sweeps"; exp/results/h200/): 64-column
    chunks, 2 warps, each chunk's tiles loaded when reached, L2 hints that keep pass A's W1 and W2 for
    pass B: 1204 us at B = 512 in round 4 against 1269 us without the hints, and 1759-1771 us for the
    55c2540 default (whole tiles, 8 warps, all requested at once) in rounds 1-3; persistent programs
    with the state staged in shared memory 1704 us."""
    return {"BLOCK_F": 64, "num_warps": max(2, head_dim // 32), "maxnreg": None, "L2_HINTS": True}


def launch(q, k, v, eta, c, gamma, beta, pos, W1, b1, W2, b2, gW1, gb1, gW2, gb2, out, config=None):
    """Run the primal step's kernel into out [B, H, f] with a launch configuration (default primal_config).

    The tensors as the custom op takes them; nothing is checked here (decode_step_primal checks)."""
    B, H, f = q.shape
    F = W1.shape[-1]
    cfg = config or primal_config(B, f, W1.dtype)
    _m2_primal_kernel[(B * H,)](
        q, k, v, eta, c, gamma, beta, pos, W1, b1, W2, b2, gW1, gb1, gW2, gb2, out,
        H, q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), eta.stride(0), eta.stride(1),
        D=f, FH=F, MB=c.shape[0], BLOCK_D=tc.pow2(f), BLOCK_F=min(cfg["BLOCK_F"], tc.pow2(F)), EPS=TTT_NORM_EPS,
        L2_HINTS=cfg.get("L2_HINTS", False), REVERSE_B=cfg.get("REVERSE_B", False), **tc.launch_options(cfg))
    return out


step_op("ttt_mlp_primal_step", ("q", "k", "v", "eta", "c", "gamma", "beta", "pos", "W1", "b1", "W2", "b2", "W1_grad",
                                "b1_grad", "W2_grad", "b2_grad"),
        ("W1", "b1", "W2", "b2", "W1_grad", "b1_grad", "W2_grad", "b2_grad"), launch)


def decode_step_primal(q, k, v, eta, c, gamma, beta, state: TTTState, cache: PrimalCache, advance: bool = True):
    """One token, primal form; same arguments and semantics as naive.decode_step_primal. -> out [B, H, f].

    Mutates: cache gradients (and pos if advance), state at the last mini-batch position."""
    tc.check_kernel_inputs("ttt_mlp primal decode", q, k, v, eta, c, gamma, beta, state, cache, mlp=True, dual=False)
    out = torch.ops.ttt_decode.ttt_mlp_primal_step(q, k, v, eta, c, gamma, beta, cache.pos, state.W1, state.b1,
                                                   state.W2, state.b2, cache.W1_grad, cache.b1_grad, cache.W2_grad,
                                                   cache.b2_grad)
    if advance:
        tc.advance_pos(cache.pos, cache.mini_batch_size)
    return out
