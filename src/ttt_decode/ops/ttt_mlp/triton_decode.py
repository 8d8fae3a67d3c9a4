"""Triton dual-form decode step of TTT-MLP (M2), DESIGN section 4; the reference is naive.decode_step_dual.

Per (sequence, head), f head dim, F = 4f hidden, b mini-batch, i = pos (read from the device):
    Z1k = k W1 + b1, X2k = gelu(Z1k), g2 = d/dZ2 1/2 ||LN(X2k W2 + b2) - (v - k)||^2,
    g1 = (g2 W2^T) * gelu'(Z1k);  cache row i <- (k, eta g1, X2k, eta g2)
    Z1' = q W1 + b1 - c_i sum_{s<=i} (q . k_s + 1) G1_s,  X2' = gelu(Z1')
    Z   = X2' W2 + b2 - c_i sum_{s<=i} (X2' . X2_s + 1) G2_s,  out = q + LN(Z)
and at i = b-1, in the same launch: W1 -= c_{b-1} K^T G1, b1 -= c_{b-1} sum_s G1_s, W2 -= c_{b-1} X2^T G2,
b2 -= c_{b-1} sum_s G2_s (G = eta * g, the cache rows as stored, i.e. rounded to the cache dtype,
exactly as the reference reads them back).

Compulsory bytes per call (s = state/cache item size, a = activation item size), per (sequence, head):
    state read once  (2 f F + F + f) s;  cache rows of earlier tokens read  i (2 f + 2 F) s;
    this token's row written  (2 f + 2 F) s;  at i = b-1 the state written  (2 f F + F + f) s;
    q, k, v read and out written 4 f a, eta 4 bytes.
  Averaged over the b positions: ops.ttt_common.inner_step_cost(mlp=True, form="dual").
  ttt-1b (H 32, f 64, b 16), fp16 state: 1.235 state-sized transfers, 83.7 KB per sequence-head-call;
  B = 512: 1.40 GB, floor 0.46 ms at 3.0 TB/s.
FLOPs per call per (sequence, head): 10 f F (k W1, q W1, X2k W2, g2 W2^T, X2' W2) + 4 (i+1)(f + F)
  (cache terms) + at i = b-1 4 b f F (rank-b update); ~0.17 MFLOP, about 2 FLOP per state byte
  (fp16): far below the machine's balance, so the step is bound by memory traffic.
Grid: (B H,), one program per (sequence, head); it holds W1 [f, BLOCK_F] and W2 [BLOCK_F, f] tiles in
  registers. With BLOCK_F >= F (a configuration, not the default) the whole W1 and W2 are loaded
  once. Otherwise (the default: 64-column chunks) F is walked in BLOCK_F chunks twice (Z2k needs the full sum over F before g2 exists): pass A reads W1
  and W2 and keeps k W1 + b1, q W1 + b1 in a small float32 scratch (Z1_SCRATCH, 2 F floats per
  program); pass B reads W2 again (mostly from L2) and the scratch, not W1.
Mutates: cache.k, cache.g1, cache.x2, cache.g2 (row pos), and at pos = b-1 state W1, b1, W2, b2.
  pos is read, never moved: with advance=True the wrapper moves it after the kernel (one tiny op).
Arithmetic in float32 (CUDA cores: the products are vector-matrix, a tensor-core tile would be 1/16
used). No autotuning (state updated in place): configurations are hand-picked per batch bucket
(`dual_config`), from the sweep recorded in exp/notes_kernels.md.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ttt_decode.ops.ttt_common import DualCache, TTTState
from ttt_decode.ops.ttt_triton_common import (
    load_token_inputs,
    advance_pos,
    check_kernel_inputs,
    gelu,
    gelu_and_grad,
    ln_fused_l2_bwd,
    ln_fwd,
    launch_options,
    pow2,
    rne,
    update_bias,
    update_tile,
)
from ttt_decode.ops.ttt_common import TTT_NORM_EPS

# Up to this hidden size the whole W1 and W2 tiles are held at once (one chunk).
MAX_ONE_TILE = 256


@triton.jit
def _w1_products(b_w1, p_b1, o_f, m_f, b_k, b_q):
    """k W1 + b1 and q W1 + b1 for a W1 tile [BD, BF] (columns o_f)."""
    b_b1 = tl.load(p_b1 + o_f, mask=m_f, other=0.0).to(tl.float32)
    b_w1 = b_w1.to(tl.float32)
    return tl.sum(b_w1 * b_k[:, None], 0) + b_b1, tl.sum(b_w1 * b_q[:, None], 0) + b_b1


@triton.jit
def _load_w1(p_w1, o_d, m_d, o_f, m_f, FH: tl.constexpr):
    return tl.load(p_w1 + o_d[:, None] * FH + o_f[None, :], mask=m_d[:, None] & m_f[None, :], other=0.0)


@triton.jit
def _load_w2(p_w2, o_d, m_d, o_f, m_f, D: tl.constexpr):
    return tl.load(p_w2 + o_f[:, None] * D + o_d[None, :], mask=m_f[:, None] & m_d[None, :], other=0.0)


@triton.jit
def _load_rows(p_rows, o_s, m_old, o_c, m_c, stride):
    """Cache rows s < pos, columns o_c: [BMB, BC] (rows at or after pos read as 0, never touched)."""
    return tl.load(p_rows + o_s[:, None] * stride + o_c[None, :], mask=m_old[:, None] & m_c[None, :], other=0.0)


@triton.jit
def _z2k_chunked(p_w1, p_b1, p_w2, p_z1, b_b2, b_k, b_q, o_d, m_d, o_f0, FH: tl.constexpr, D: tl.constexpr,
                 BLOCK_F: tl.constexpr, NUM_CHUNKS: tl.constexpr, Z1_SCRATCH: tl.constexpr):
    """Pass A over F in BLOCK_F chunks: Z2k = gelu(k W1 + b1) W2 + b2 [BD]. Software-pipelined: the
    next chunk's W1 and W2 tiles are requested before this chunk is computed. With Z1_SCRATCH, k W1 + b1
    and q W1 + b1 are also stored at p_z1 (F floats each) for pass B. Shared by the dual and primal kernels."""
    z2k = b_b2
    n_w1 = _load_w1(p_w1, o_d, m_d, o_f0, o_f0 < FH, FH)
    n_w2 = _load_w2(p_w2, o_d, m_d, o_f0, o_f0 < FH, D)
    for ci in range(NUM_CHUNKS):
        o_f = ci * BLOCK_F + o_f0
        m_f = o_f < FH
        c_w1, c_w2 = n_w1, n_w2
        m_n = (o_f + BLOCK_F) < FH
        n_w1 = _load_w1(p_w1, o_d, m_d, o_f + BLOCK_F, m_n, FH)
        n_w2 = _load_w2(p_w2, o_d, m_d, o_f + BLOCK_F, m_n, D)
        z1k, z1q0 = _w1_products(c_w1, p_b1, o_f, m_f, b_k, b_q)
        if Z1_SCRATCH:
            tl.store(p_z1 + o_f, z1k, mask=m_f)
            tl.store(p_z1 + FH + o_f, z1q0, mask=m_f)
        z2k += tl.sum(gelu(z1k)[:, None] * c_w2.to(tl.float32), 0)
    return z2k


@triton.jit
def _chunk_b(b_w2, x2k, dx2k, z1q0, g2, eta, c_i, a1, pos, b_g1, b_x2, p_cg1, p_cx2, o_f, m_f, o_s,
             FH: tl.constexpr, CACHE_DT: tl.constexpr):
    """With g2 known: this chunk's g1 and X2k cache rows (written), Z1', X2' and its W2 / X2_s products.

    b_g1, b_x2 [BMB, BF]: the earlier rows of the chunk (0 at s >= pos); a1 [BMB]: q . k_s + 1 for
    s <= pos, 0 elsewhere. Returns (X2' W2 partial [BD], X2' . X2_s partial [BMB] for s <= pos)."""
    b_w2f = b_w2.to(tl.float32)  # [BF, BD]
    g1t = rne(tl.sum(b_w2f * g2[None, :], 1) * dx2k * eta, CACHE_DT)
    x2k_r = rne(x2k, CACHE_DT)
    tl.store(p_cg1 + pos * FH + o_f, g1t, mask=m_f)
    tl.store(p_cx2 + pos * FH + o_f, x2k_r, mask=m_f)
    cur = (o_s == pos)[:, None]
    b_g1 = tl.where(cur, g1t.to(tl.float32)[None, :], b_g1.to(tl.float32))
    x2q = gelu(z1q0 - c_i * tl.sum(a1[:, None] * b_g1, 0))  # [BF]
    b_x2 = tl.where(cur, x2k_r.to(tl.float32)[None, :], b_x2.to(tl.float32))
    return tl.sum(x2q[:, None] * b_w2f, 0), tl.sum(b_x2 * x2q[None, :], 1)


@triton.jit
def _m2_dual_kernel(
    q_ptr, k_ptr, v_ptr, eta_ptr, c_ptr, gamma_ptr, beta_ptr, pos_ptr,
    w1_ptr, b1_ptr, w2_ptr, b2_ptr, ck_ptr, cg1_ptr, cx2_ptr, cg2_ptr, out_ptr, z1_ptr,
    H, stride_qb, stride_qh, stride_kb, stride_kh, stride_vb, stride_vh, stride_eb, stride_eh,
    D: tl.constexpr, FH: tl.constexpr, MB: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_F: tl.constexpr, BLOCK_MB: tl.constexpr, EPS: tl.constexpr,
    EARLY: tl.constexpr, RELOAD_W2: tl.constexpr, UPDATE_DOT: tl.constexpr, Z1_SCRATCH: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    i_b = pid // H
    i_h = pid % H
    CACHE_DT: tl.constexpr = ck_ptr.dtype.element_ty
    ONE_CHUNK: tl.constexpr = BLOCK_F >= FH
    NUM_CHUNKS: tl.constexpr = (FH + BLOCK_F - 1) // BLOCK_F
    o_d = tl.arange(0, BLOCK_D)
    m_d = o_d < D
    o_s = tl.arange(0, BLOCK_MB)
    o_f0 = tl.arange(0, BLOCK_F)
    pos = tl.load(pos_ptr).to(tl.int32)
    # Rows written by the earlier tokens of this mini-batch; this token's row comes from registers.
    m_old = o_s < pos
    m_cur = o_s == pos
    m_rows = m_old | m_cur

    p_w1 = w1_ptr + pid * (D * FH)
    p_b1 = b1_ptr + pid * FH
    p_w2 = w2_ptr + pid * (FH * D)
    p_b2 = b2_ptr + pid * D
    p_ck = ck_ptr + pid * (MB * D)
    p_cg1 = cg1_ptr + pid * (MB * FH)
    p_cx2 = cx2_ptr + pid * (MB * FH)
    p_cg2 = cg2_ptr + pid * (MB * D)
    p_z1 = z1_ptr + pid * (2 * FH)  # Z1_SCRATCH: k W1 + b1 and q W1 + b1 of pass A, float32

    # The state first: the large transfers, in flight while the small inputs arrive.
    if ONE_CHUNK:
        m_f = o_f0 < FH
        b_w1 = _load_w1(p_w1, o_d, m_d, o_f0, m_f, FH)  # [BD, BF]
        if EARLY:
            # Everything the program reads is requested at once (one memory latency instead of three),
            # at the price of holding W1, W2 and the cache rows together.
            b_w2 = _load_w2(p_w2, o_d, m_d, o_f0, m_f, D)  # [BF, BD]
            b_g1 = _load_rows(p_cg1, o_s, m_old, o_f0, m_f, FH)  # [BMB, BF]
            b_x2 = _load_rows(p_cx2, o_s, m_old, o_f0, m_f, FH)
    b_q, b_k, b_v, eta, c_i, gam, bet = load_token_inputs(
        q_ptr, k_ptr, v_ptr, eta_ptr, c_ptr, gamma_ptr, beta_ptr, pos, i_b, i_h, o_d, m_d,
        stride_qb, stride_qh, stride_kb, stride_kh, stride_vb, stride_vh, stride_eb, stride_eh, D)  # [BD] each
    b_b2 = tl.load(p_b2 + o_d, mask=m_d, other=0.0).to(tl.float32)
    b_kc = _load_rows(p_ck, o_s, m_old, o_d, m_d, D)  # [BMB, BD]
    b_g2c = _load_rows(p_cg2, o_s, m_old, o_d, m_d, D)

    # Weights of the rows s <= pos in Z1': q . k_s + 1 (this token's row as stored).
    k_r = rne(b_k, CACHE_DT)
    tl.store(p_ck + pos * D + o_d, k_r, mask=m_d)
    b_kc = tl.where(m_cur[:, None], k_r.to(tl.float32)[None, :], b_kc.to(tl.float32))
    a1 = tl.where(m_rows, tl.sum(b_kc * b_q[None, :], 1) + 1.0, 0.0)  # [BMB]

    # Pass A: Z2k = gelu(k W1 + b1) W2 + b2 needs every column of W1 before g2 exists.
    if ONE_CHUNK:
        z1k, z1q0 = _w1_products(b_w1, p_b1, o_f0, m_f, b_k, b_q)
        x2k, dx2k = gelu_and_grad(z1k)
        if not EARLY:
            b_w2 = _load_w2(p_w2, o_d, m_d, o_f0, m_f, D)
        z2k = tl.sum(x2k[:, None] * b_w2.to(tl.float32), 0) + b_b2
    else:
        z2k = _z2k_chunked(p_w1, p_b1, p_w2, p_z1, b_b2, b_k, b_q, o_d, m_d, o_f0, FH, D, BLOCK_F, NUM_CHUNKS,
                           Z1_SCRATCH)
    g2 = ln_fused_l2_bwd(z2k, b_v - b_k, gam, bet, m_d, D, EPS)  # [BD], dl/dZ2
    g2t = rne(g2 * eta, CACHE_DT)
    tl.store(p_cg2 + pos * D + o_d, g2t, mask=m_d)

    # Pass B: g1, Z1', X2' and the X2' products, chunk by chunk (from registers if one chunk).
    if ONE_CHUNK:
        if RELOAD_W2:
            # A second read (from L2) instead of holding W2 in registers through the LayerNorm backward.
            b_w2 = _load_w2(p_w2, o_d, m_d, o_f0, m_f, D)
        if not EARLY:
            b_g1 = _load_rows(p_cg1, o_s, m_old, o_f0, m_f, FH)
            b_x2 = _load_rows(p_cx2, o_s, m_old, o_f0, m_f, FH)
        z2q, dots = _chunk_b(b_w2, x2k, dx2k, z1q0, g2, eta, c_i, a1, pos, b_g1, b_x2, p_cg1, p_cx2, o_f0, m_f,
                             o_s, FH, CACHE_DT)
    else:
        z2q = tl.zeros([BLOCK_D], dtype=tl.float32)
        dots = tl.zeros([BLOCK_MB], dtype=tl.float32)
        if Z1_SCRATCH:
            # Pass A's Z1 rows come back from the scratch (2 F floats, L1/L2) instead of W1 being walked
            # again: at large batch the second walk of W1 and W2 does not all hit L2 and costs HBM bytes.
            tl.debug_barrier()
        else:
            n_w1 = _load_w1(p_w1, o_d, m_d, o_f0, o_f0 < FH, FH)
        n_w2 = _load_w2(p_w2, o_d, m_d, o_f0, o_f0 < FH, D)
        n_g1 = _load_rows(p_cg1, o_s, m_old, o_f0, o_f0 < FH, FH)
        n_x2 = _load_rows(p_cx2, o_s, m_old, o_f0, o_f0 < FH, FH)
        for ci in range(NUM_CHUNKS):
            o_f = ci * BLOCK_F + o_f0
            m_f = o_f < FH
            c_w2, c_g1, c_x2 = n_w2, n_g1, n_x2
            m_n = (o_f + BLOCK_F) < FH
            if Z1_SCRATCH:
                z1k = tl.load(p_z1 + o_f, mask=m_f, other=0.0)
                z1q0 = tl.load(p_z1 + FH + o_f, mask=m_f, other=0.0)
            else:
                c_w1 = n_w1
                n_w1 = _load_w1(p_w1, o_d, m_d, o_f + BLOCK_F, m_n, FH)
                z1k, z1q0 = _w1_products(c_w1, p_b1, o_f, m_f, b_k, b_q)
            n_w2 = _load_w2(p_w2, o_d, m_d, o_f + BLOCK_F, m_n, D)
            n_g1 = _load_rows(p_cg1, o_s, m_old, o_f + BLOCK_F, m_n, FH)
            n_x2 = _load_rows(p_cx2, o_s, m_old, o_f + BLOCK_F, m_n, FH)
            x2k, dx2k = gelu_and_grad(z1k)
            zc, dc = _chunk_b(c_w2, x2k, dx2k, z1q0, g2, eta, c_i, a1, pos, c_g1, c_x2, p_cg1, p_cx2, o_f, m_f, o_s,
                              FH, CACHE_DT)
            z2q += zc
            dots += dc

    b_g2c = tl.where(m_cur[:, None], g2t.to(tl.float32)[None, :], b_g2c.to(tl.float32))
    a2 = tl.where(m_rows, dots + 1.0, 0.0)
    z2 = z2q + b_b2 - c_i * tl.sum(a2[:, None] * b_g2c, 0)
    out = b_q + ln_fwd(z2, gam, bet, m_d, D, EPS)
    tl.store(out_ptr + pid * D + o_d, rne(out, out_ptr.dtype.element_ty), mask=m_d)

    # End of the mini-batch (c_i is c_{b-1} here): the rank-b update of the state from the cache rows;
    # the rows then become stale. This token's rows were stored by other threads of the program: the
    # barrier makes them visible before they are read back.
    if pos == MB - 1:
        tl.debug_barrier()
        m_all = o_s < MB
        # In column slices of at most 64 (a [64, BF] float32 accumulator would not fit in registers).
        UPD_F: tl.constexpr = min(BLOCK_F, 64)
        o_u0 = tl.arange(0, UPD_F)
        for ci in range((FH + UPD_F - 1) // UPD_F):
            o_u = ci * UPD_F + o_u0
            m_u = o_u < FH
            update_tile(p_w1, p_ck, p_cg1, o_d, m_d, o_u, m_u, o_s, m_all, FH, D, FH, c_i, MB, UPDATE_DOT, True)
            update_tile(p_w2, p_cx2, p_cg2, o_u, m_u, o_d, m_d, o_s, m_all, D, FH, D, c_i, MB, UPDATE_DOT, True)
            update_bias(p_b1, p_cg1, o_u, m_u, o_s, m_all, FH, c_i)
        update_bias(p_b2, p_cg2, o_d, m_d, o_s, m_all, D, c_i)


def dual_config(batch: int, head_dim: int, state_dtype: torch.dtype) -> dict:
    """Hand-picked launch configuration (no autotune: the state is updated in place).

    H100 sweep at B=512, ttt-1b (exp/results/h100/kernels_runA.jsonl, 14 configurations): 64-column
    chunks with 2 warps, the next chunk prefetched, W2 re-read from L2 in the second pass and the
    update on tensor cores was fastest (1094 us, 41% of copy bandwidth) and stays best or within 3%
    from B=16 to 1024; whole [64, 256] tiles with 4 warps: 1145 us; 8 warps or 32-column chunks 1.6-2x
    slower. Warps grow with the head dim (a [128, 64] chunk at f = 128).
    Run E (m2_dual_runE.jsonl, one run): keeping pass A's Z1 in a float32 scratch instead of walking
    W1 again in pass B took B=512 from 933 to 817 us (1.14x; 54.6% of copy bandwidth), and was the
    fastest of 7 configurations with the scratch."""
    return {"BLOCK_F": 64, "num_warps": max(2, head_dim // 32), "maxnreg": None, "EARLY": False, "RELOAD_W2": True,
            "UPDATE_DOT": True, "Z1_SCRATCH": True}


def _launch(q, k, v, eta, c, gamma, beta, pos, W1, b1, W2, b2, ck, cg1, cx2, cg2, out, config=None):
    B, H, f = q.shape
    F = W1.shape[-1]
    b = ck.shape[2]
    cfg = config or dual_config(B, f, W1.dtype)
    z1_scratch = cfg.get("Z1_SCRATCH", False) and pow2(F) > min(cfg["BLOCK_F"], pow2(F))  # only the chunked walk uses it
    z1 = torch.empty(B * H * 2 * F if z1_scratch else 1, dtype=torch.float32, device=q.device)
    _m2_dual_kernel[(B * H,)](
        q, k, v, eta, c, gamma, beta, pos, W1, b1, W2, b2, ck, cg1, cx2, cg2, out, z1,
        H, q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), eta.stride(0), eta.stride(1),
        D=f, FH=F, MB=b, BLOCK_D=pow2(f), BLOCK_F=min(cfg["BLOCK_F"], pow2(F)), BLOCK_MB=max(16, pow2(b)),
        EPS=TTT_NORM_EPS, EARLY=cfg["EARLY"], RELOAD_W2=cfg["RELOAD_W2"], UPDATE_DOT=cfg["UPDATE_DOT"],
        Z1_SCRATCH=z1_scratch, **launch_options(cfg))
    return out


_MUTATED = ("W1", "b1", "W2", "b2", "cache_k", "cache_g1", "cache_x2", "cache_g2")


@torch.library.custom_op("ttt_decode::ttt_mlp_dual_step", mutates_args=_MUTATED)
def _dual_step_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, eta: torch.Tensor, c: torch.Tensor,
                  gamma: torch.Tensor, beta: torch.Tensor, pos: torch.Tensor, W1: torch.Tensor, b1: torch.Tensor,
                  W2: torch.Tensor, b2: torch.Tensor, cache_k: torch.Tensor, cache_g1: torch.Tensor,
                  cache_x2: torch.Tensor, cache_g2: torch.Tensor) -> torch.Tensor:
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)  # [B, H, f]
    return _launch(q, k, v, eta, c, gamma, beta, pos, W1, b1, W2, b2, cache_k, cache_g1, cache_x2, cache_g2, out)


@_dual_step_op.register_fake
def _(q, k, v, eta, c, gamma, beta, pos, W1, b1, W2, b2, cache_k, cache_g1, cache_x2, cache_g2):
    return torch.empty(q.shape, dtype=q.dtype, device=q.device)


def decode_step_dual(q, k, v, eta, c, gamma, beta, state: TTTState, cache: DualCache, advance: bool = True):
    """One token, dual form; same arguments and semantics as naive.decode_step_dual. -> out [B, H, f].

    Mutates: cache rows at pos (and pos itself if advance), state at the last mini-batch position."""
    check_kernel_inputs("ttt_mlp dual decode", q, k, v, eta, c, gamma, beta, state, cache, mlp=True, dual=True)
    out = torch.ops.ttt_decode.ttt_mlp_dual_step(q, k, v, eta, c, gamma, beta, cache.pos, state.W1, state.b1,
                                                 state.W2, state.b2, cache.k, cache.g1, cache.x2, cache.g2)
    if advance:
        advance_pos(cache.pos, cache.mini_batch_size)
    return out
