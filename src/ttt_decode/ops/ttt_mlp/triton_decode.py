"""Triton dual-form decode step of TTT-MLP (M2), DESIGN section 4; the reference is naive.decode_step_dual.

Per (sequence, head) item, f head dim, F = 4f hidden, b mini-batch, i = pos (read from the device):
    Z1k = k W1 + b1, X2k = gelu(Z1k), g2 = d/dZ2 1/2 ||LN(X2k W2 + b2) - (v - k)||^2,
    g1 = (g2 W2^T) * gelu'(Z1k);  cache row i <- (k, eta g1, X2k, eta g2)
    Z1' = q W1 + b1 - c_i sum_{s<=i} (q . k_s + 1) G1_s,  X2' = gelu(Z1')
    Z   = X2' W2 + b2 - c_i sum_{s<=i} (X2' . X2_s + 1) G2_s,  out = q + LN(Z)
and at i = b-1: W1 -= c_{b-1} K^T G1, b1 -= c_{b-1} sum_s G1_s, W2 -= c_{b-1} X2^T G2, b2 -= c_{b-1} sum_s G2_s
(G = eta * g, the cache rows as stored, i.e. rounded to the cache dtype, exactly as the reference reads
them back).

Compulsory bytes per call (s = state/cache item size, a = activation item size), per item:
    state read once  (2 f F + F + f) s;  cache rows of earlier tokens read  i (2 f + 2 F) s;
    this token's row written  (2 f + 2 F) s;  at i = b-1 the state written  (2 f F + F + f) s;
    q, k, v read and out written 4 f a, eta 4 bytes.
  Averaged over the b positions: ops.ttt_common.inner_step_cost(mlp=True, form="dual").
  ttt-1b (H 32, f 64, b 16), fp16 state: 83.7 KB per item and call; B = 512 (16384 items): 1.37 GB,
  floor 321 us at 4271 GB/s. The last position moves 2.0x the mean of the others (it writes W).
FLOPs per item: 10 f F (k W1, q W1, X2k W2, g2 W2^T, X2' W2) + 4 (i+1)(f + F) (cache terms) + at i = b-1
  4 b f F (the rank-b update); ~0.17 MFLOP, ~2 FLOP per state byte: bound by memory traffic.

Two designs (docs/DESIGN.md section 11):
- persistent (F <= triton_tiles.MAX_WHOLE_F, i.e. f <= 64; the default): `programs_per_sm` programs per
  multiprocessor, each looping over items pid, pid + P, ... with `tl.range(num_stages=STAGES)`: Triton
  stages the next STAGES-1 items' loads (W1, W2, the cache rows, q/k/v) in shared memory with async
  copies while the current item's serial chain (Z2, LayerNorm backward, g1, Z1', X2', the output) runs.
  The four matrix-vector products read W1 and W2 on the tensor cores (ttt_triton_common.vec_mat: an
  fp32 vector as fp16 hi + lo rows, as accurate as float32 arithmetic), so the tiles need no registers
  of their own. The end-of-mini-batch update is its own kernel (MODE 2, launched beside MODE 1 on every
  call; each reads pos and runs only at its positions), so the ordinary positions carry no registers
  for it; it updates W from the tiles it already holds, the rank-b products on the tensor cores.
- chunked (larger heads): one program per item walking F in BLOCK_F chunks twice (Z2k needs the
  full sum over F before g2 exists): pass A reads W1 and W2 and keeps k W1 + b1, q W1 + b1 in a
  float32 scratch (2 F floats per item); pass B reads W2 again (mostly from L2) and the scratch.
Mutates: cache.k, cache.g1, cache.x2, cache.g2 (row pos), and at pos = b-1 state W1, b1, W2, b2.
  pos is read, never moved: with advance=True the wrapper moves it after the kernels (one tiny op).
No autotuning (state updated in place): configurations are hand-picked per batch bucket
(`dual_config`), from the H200 sweep in exp/NOTES.md.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ttt_decode.ops.ttt_common import TTT_NORM_EPS, DualCache, TTTState
from ttt_decode.ops.ttt_mlp.triton_tiles import MAX_WHOLE_F, forward_grads, load_w, load_w1, load_w2, w1_products, z2k_chunked
from ttt_decode.ops.ttt_triton_common import (
    advance_pos,
    check_kernel_inputs,
    gelu,
    gelu_and_grad,
    interpreting,
    launch_options,
    ln_fused_l2_bwd,
    ln_fwd,
    load_token_inputs,
    mma,
    persistent_grid,
    pow2,
    rne,
    update_bias,
    update_tile,
    vec_mat,
)

# MODE of the persistent kernel: which mini-batch positions a launch serves.
EVERY_POSITION = tl.constexpr(0)
ORDINARY_POSITIONS = tl.constexpr(1)  # all but the last; the launch does nothing at the last
LAST_POSITION = tl.constexpr(2)  # only the last (with the state update); nothing elsewhere


@triton.jit
def _m2_dual_persistent_kernel(
    q_ptr, k_ptr, v_ptr, eta_ptr, c_ptr, gamma_ptr, beta_ptr, pos_ptr,
    w1_ptr, b1_ptr, w2_ptr, b2_ptr, ck_ptr, cg1_ptr, cx2_ptr, cg2_ptr, out_ptr,
    n_items, H, stride_qb, stride_qh, stride_kb, stride_kh, stride_vb, stride_vh, stride_eb, stride_eh,
    D: tl.constexpr, FH: tl.constexpr, MB: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_F: tl.constexpr, BLOCK_MB: tl.constexpr, EPS: tl.constexpr,
    MODE: tl.constexpr, STAGES: tl.constexpr, EMULATE_BF16: tl.constexpr,
):
    CDT: tl.constexpr = ck_ptr.dtype.element_ty
    pid = tl.program_id(0)
    n_prog = tl.num_programs(0)
    o_d = tl.arange(0, BLOCK_D)
    m_d = o_d < D
    o_f = tl.arange(0, BLOCK_F)
    m_f = o_f < FH
    o_s = tl.arange(0, BLOCK_MB)
    pos = tl.load(pos_ptr).to(tl.int32)
    c_i = tl.load(c_ptr + pos).to(tl.float32)
    last = pos == MB - 1
    # Rows written by the earlier tokens of this mini-batch; this token's row comes from registers.
    m_old = o_s < pos
    m_kd = m_old[:, None] & m_d[None, :]
    m_kf = m_old[:, None] & m_f[None, :]
    if MODE == ORDINARY_POSITIONS:
        n_run = tl.where(last, 0, n_items)
    elif MODE == LAST_POSITION:
        n_run = tl.where(last, n_items, 0)
    else:
        n_run = n_items
    for item in tl.range(pid, n_run, n_prog, num_stages=STAGES):
        it = tl.cast(item, tl.int64)
        i_b = item // H
        i_h = item % H
        p_ck = ck_ptr + it * (MB * D)
        p_cg1 = cg1_ptr + it * (MB * FH)
        p_cx2 = cx2_ptr + it * (MB * FH)
        p_cg2 = cg2_ptr + it * (MB * D)
        # The pipeline prefetches every load of the loop body, wherever it is written; each is written
        # where its value is first used, so that the tile occupies registers only from there on.
        b_w1, b_w2, b_b1, b_b2 = load_w(w1_ptr, w2_ptr, b1_ptr, b2_ptr, it, o_d, m_d, o_f, m_f, D, FH)
        b_q = tl.load(q_ptr + i_b * stride_qb + i_h * stride_qh + o_d, mask=m_d, other=0.0).to(tl.float32)
        b_k = tl.load(k_ptr + i_b * stride_kb + i_h * stride_kh + o_d, mask=m_d, other=0.0).to(tl.float32)
        b_v = tl.load(v_ptr + i_b * stride_vb + i_h * stride_vh + o_d, mask=m_d, other=0.0).to(tl.float32)
        eta = tl.load(eta_ptr + i_b * stride_eb + i_h * stride_eh).to(tl.float32)
        gam = tl.load(gamma_ptr + i_h * D + o_d, mask=m_d, other=0.0).to(tl.float32)
        bet = tl.load(beta_ptr + i_h * D + o_d, mask=m_d, other=0.0).to(tl.float32)

        # This token's gradients at the mini-batch start state, and its cache row (as stored).
        z1q, x2k, g2, g1 = forward_grads(b_w1, b_w2, b_b1, b_b2, b_q, b_k, b_v, gam, bet, m_d, D, EPS, EMULATE_BF16)
        k_r = rne(b_k, CDT)
        g1_r = rne(g1 * eta, CDT)
        x2_r = rne(x2k, CDT)
        g2_r = rne(g2 * eta, CDT)
        tl.store(p_ck + pos * D + o_d, k_r, mask=m_d)
        tl.store(p_cg1 + pos * FH + o_f, g1_r, mask=m_f)
        tl.store(p_cx2 + pos * FH + o_f, x2_r, mask=m_f)
        tl.store(p_cg2 + pos * D + o_d, g2_r, mask=m_d)

        # Output: the rows s < pos from the cache, row pos from registers.
        b_kc = tl.load(p_ck + o_s[:, None] * D + o_d[None, :], mask=m_kd, other=0.0)  # [BMB, BD]
        b_g1c = tl.load(p_cg1 + o_s[:, None] * FH + o_f[None, :], mask=m_kf, other=0.0)  # [BMB, BF]
        a1 = tl.where(m_old, tl.sum(b_kc.to(tl.float32) * b_q[None, :], 1) + 1.0, 0.0)  # [BMB]
        a1_i = tl.sum(k_r.to(tl.float32) * b_q, 0) + 1.0
        x2q = gelu(z1q - (tl.sum(a1[:, None] * b_g1c.to(tl.float32), 0) + g1_r.to(tl.float32) * a1_i) * c_i)
        z2 = vec_mat(x2q, b_w2, EMULATE_BF16) + b_b2
        b_x2c = tl.load(p_cx2 + o_s[:, None] * FH + o_f[None, :], mask=m_kf, other=0.0)  # [BMB, BF]
        b_g2c = tl.load(p_cg2 + o_s[:, None] * D + o_d[None, :], mask=m_kd, other=0.0)  # [BMB, BD]
        a2 = tl.where(m_old, tl.sum(b_x2c.to(tl.float32) * x2q[None, :], 1) + 1.0, 0.0)  # [BMB]
        a2_i = tl.sum(x2_r.to(tl.float32) * x2q, 0) + 1.0
        z2 = z2 - (tl.sum(a2[:, None] * b_g2c.to(tl.float32), 0) + g2_r.to(tl.float32) * a2_i) * c_i
        out = b_q + ln_fwd(z2, gam, bet, m_d, D, EPS)
        tl.store(out_ptr + it * D + o_d, rne(out, out_ptr.dtype.element_ty), mask=m_d)

        if MODE != ORDINARY_POSITIONS:
            if last:
                # End of the mini-batch (c_i is c_{b-1} here): the rank-b update from all b rows. W is
                # read again under the branch (plain loads, from L2): the pipelined tiles stay dot
                # operands and hold no registers in the update's layout.
                cur = (o_s == pos)[:, None]
                kf = tl.where(cur, k_r[None, :], b_kc)
                g1f = tl.where(cur, g1_r[None, :], b_g1c)
                x2f = tl.where(cur, x2_r[None, :], b_x2c)
                g2f = tl.where(cur, g2_r[None, :], b_g2c)
                p_w1 = w1_ptr + it * (D * FH) + o_d[:, None] * FH + o_f[None, :]
                m_w1 = m_d[:, None] & m_f[None, :]
                w1 = tl.load(p_w1, mask=m_w1, other=0.0).to(tl.float32) - mma(tl.trans(kf), g1f, EMULATE_BF16) * c_i
                tl.store(p_w1, rne(w1, w1_ptr.dtype.element_ty), mask=m_w1)
                p_w2 = w2_ptr + it * (FH * D) + o_f[:, None] * D + o_d[None, :]
                m_w2 = m_f[:, None] & m_d[None, :]
                w2 = tl.load(p_w2, mask=m_w2, other=0.0).to(tl.float32) - mma(tl.trans(x2f), g2f, EMULATE_BF16) * c_i
                tl.store(p_w2, rne(w2, w2_ptr.dtype.element_ty), mask=m_w2)
                b1 = b_b1 - tl.sum(g1f.to(tl.float32), 0) * c_i
                tl.store(b1_ptr + it * FH + o_f, rne(b1, b1_ptr.dtype.element_ty), mask=m_f)
                b2 = b_b2 - tl.sum(g2f.to(tl.float32), 0) * c_i
                tl.store(b2_ptr + it * D + o_d, rne(b2, b2_ptr.dtype.element_ty), mask=m_d)


@triton.jit
def _chunk_b(b_w2, x2k, dx2k, z1q0, g2, eta, c_i, a1, pos, b_g1, b_x2, p_cg1, p_cx2, o_f, m_f, o_s,
             FH: tl.constexpr, CACHE_DT: tl.constexpr):
    """Chunked kernel, with g2 known: this chunk's g1 and X2k cache rows (written), Z1', X2' and its
    W2 / X2_s products. b_g1, b_x2 [BMB, BF]: the earlier rows of the chunk (0 at s >= pos); a1 [BMB]:
    q . k_s + 1 for s <= pos, 0 elsewhere. Returns (X2' W2 partial [BD], X2' . X2_s partial [BMB])."""
    b_w2f = b_w2.to(tl.float32)  # [BF, BD]
    g1t = rne(tl.sum(b_w2f * g2[None, :], 1) * dx2k * eta, CACHE_DT)
    x2k_r = rne(x2k, CACHE_DT)
    tl.store(p_cg1 + pos * FH + o_f, g1t, mask=m_f)
    tl.store(p_cx2 + pos * FH + o_f, x2k_r, mask=m_f)
    cur = (o_s == pos)[:, None]
    b_g1 = tl.where(cur, g1t.to(tl.float32)[None, :], b_g1.to(tl.float32))
    x2q = gelu(z1q0 - tl.sum(a1[:, None] * b_g1, 0) * c_i)  # [BF]
    b_x2 = tl.where(cur, x2k_r.to(tl.float32)[None, :], b_x2.to(tl.float32))
    return tl.sum(x2q[:, None] * b_w2f, 0), tl.sum(b_x2 * x2q[None, :], 1)


@triton.jit
def _load_rows(p_rows, o_s, m_old, o_c, m_c, stride):
    """Cache rows s < pos, columns o_c: [BMB, BC] (rows at or after pos read as 0, never touched)."""
    return tl.load(p_rows + o_s[:, None] * stride + o_c[None, :], mask=m_old[:, None] & m_c[None, :], other=0.0)


@triton.jit
def _m2_dual_chunked_kernel(
    q_ptr, k_ptr, v_ptr, eta_ptr, c_ptr, gamma_ptr, beta_ptr, pos_ptr,
    w1_ptr, b1_ptr, w2_ptr, b2_ptr, ck_ptr, cg1_ptr, cx2_ptr, cg2_ptr, out_ptr, z1_ptr,
    H, stride_qb, stride_qh, stride_kb, stride_kh, stride_vb, stride_vh, stride_eb, stride_eh,
    D: tl.constexpr, FH: tl.constexpr, MB: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_F: tl.constexpr, BLOCK_MB: tl.constexpr, EPS: tl.constexpr,
    PREFETCH: tl.constexpr, UPD_F: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    i_b = pid // H
    i_h = pid % H
    CACHE_DT: tl.constexpr = ck_ptr.dtype.element_ty
    NUM_CHUNKS: tl.constexpr = (FH + BLOCK_F - 1) // BLOCK_F
    o_d = tl.arange(0, BLOCK_D)
    m_d = o_d < D
    o_s = tl.arange(0, BLOCK_MB)
    o_f0 = tl.arange(0, BLOCK_F)
    pos = tl.load(pos_ptr).to(tl.int32)
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
    p_z1 = z1_ptr + pid * (2 * FH)  # k W1 + b1 and q W1 + b1 of pass A, float32

    b_q, b_k, b_v, eta, c_i, gam, bet = load_token_inputs(
        q_ptr, k_ptr, v_ptr, eta_ptr, c_ptr, gamma_ptr, beta_ptr, pos, i_b, i_h, o_d, m_d,
        stride_qb, stride_qh, stride_kb, stride_kh, stride_vb, stride_vh, stride_eb, stride_eh, D)  # [BD] each
    b_b2 = tl.load(p_b2 + o_d, mask=m_d, other=0.0).to(tl.float32)
    b_kc = _load_rows(p_ck, o_s, m_old, o_d, m_d, D)  # [BMB, BD]

    # Weights of the rows s <= pos in Z1': q . k_s + 1 (this token's row as stored).
    k_r = rne(b_k, CACHE_DT)
    tl.store(p_ck + pos * D + o_d, k_r, mask=m_d)
    b_kc = tl.where(m_cur[:, None], k_r.to(tl.float32)[None, :], b_kc.to(tl.float32))
    a1 = tl.where(m_rows, tl.sum(b_kc * b_q[None, :], 1) + 1.0, 0.0)  # [BMB]

    # Pass A: Z2k = gelu(k W1 + b1) W2 + b2 needs every column of W1 before g2 exists.
    z2k = z2k_chunked(p_w1, p_b1, p_w2, p_z1, b_b2, b_k, b_q, o_d, m_d, o_f0, FH, D, BLOCK_F, NUM_CHUNKS, True,
                      PREFETCH)
    g2 = ln_fused_l2_bwd(z2k, b_v - b_k, gam, bet, m_d, D, EPS)  # [BD], dl/dZ2
    g2t = rne(g2 * eta, CACHE_DT)
    tl.store(p_cg2 + pos * D + o_d, g2t, mask=m_d)

    # Pass B: g1, Z1', X2' and the X2' products, chunk by chunk; pass A's Z1 comes back from the
    # scratch (L1/L2) instead of W1 being walked again. Its stores were made by other threads.
    tl.debug_barrier()
    z2q = tl.zeros([BLOCK_D], dtype=tl.float32)
    dots = tl.zeros([BLOCK_MB], dtype=tl.float32)
    n_w2 = load_w2(p_w2, o_d, m_d, o_f0, o_f0 < FH, D)
    n_g1 = _load_rows(p_cg1, o_s, m_old, o_f0, o_f0 < FH, FH)
    n_x2 = _load_rows(p_cx2, o_s, m_old, o_f0, o_f0 < FH, FH)
    for ci in range(NUM_CHUNKS):
        o_f = ci * BLOCK_F + o_f0
        m_f = o_f < FH
        if PREFETCH:
            c_w2, c_g1, c_x2 = n_w2, n_g1, n_x2
            m_n = (o_f + BLOCK_F) < FH
            n_w2 = load_w2(p_w2, o_d, m_d, o_f + BLOCK_F, m_n, D)
            n_g1 = _load_rows(p_cg1, o_s, m_old, o_f + BLOCK_F, m_n, FH)
            n_x2 = _load_rows(p_cx2, o_s, m_old, o_f + BLOCK_F, m_n, FH)
        else:
            c_w2 = load_w2(p_w2, o_d, m_d, o_f, m_f, D)
            c_g1 = _load_rows(p_cg1, o_s, m_old, o_f, m_f, FH)
            c_x2 = _load_rows(p_cx2, o_s, m_old, o_f, m_f, FH)
        z1k = tl.load(p_z1 + o_f, mask=m_f, other=0.0)
        z1q0 = tl.load(p_z1 + FH + o_f, mask=m_f, other=0.0)
        x2k, dx2k = gelu_and_grad(z1k)
        zc, dc = _chunk_b(c_w2, x2k, dx2k, z1q0, g2, eta, c_i, a1, pos, c_g1, c_x2, p_cg1, p_cx2, o_f, m_f, o_s,
                          FH, CACHE_DT)
        z2q += zc
        dots += dc

    # Loaded where used (after the F walks): a tile held through them costs registers at every position.
    b_g2c = _load_rows(p_cg2, o_s, m_old, o_d, m_d, D)  # [BMB, BD]
    b_g2c = tl.where(m_cur[:, None], g2t.to(tl.float32)[None, :], b_g2c.to(tl.float32))
    a2 = tl.where(m_rows, dots + 1.0, 0.0)
    z2 = z2q + b_b2 - tl.sum(a2[:, None] * b_g2c, 0) * c_i
    out = b_q + ln_fwd(z2, gam, bet, m_d, D, EPS)
    tl.store(out_ptr + pid * D + o_d, rne(out, out_ptr.dtype.element_ty), mask=m_d)

    # End of the mini-batch: the rank-b update from the cache rows, which this program's other threads
    # just completed (the barrier makes them visible), in column slices of at most 64.
    if pos == MB - 1:
        tl.debug_barrier()
        m_all = o_s < MB
        o_u0 = tl.arange(0, UPD_F)
        for ci in range((FH + UPD_F - 1) // UPD_F):
            o_u = ci * UPD_F + o_u0
            m_u = o_u < FH
            update_tile(p_w1, p_ck, p_cg1, o_d, m_d, o_u, m_u, o_s, m_all, FH, D, FH, c_i, MB, True, True)
            update_tile(p_w2, p_cx2, p_cg2, o_u, m_u, o_d, m_d, o_s, m_all, D, FH, D, c_i, MB, True, True)
            update_bias(p_b1, p_cg1, o_u, m_u, o_s, m_all, FH, c_i)
        update_bias(p_b2, p_cg2, o_d, m_d, o_s, m_all, D, c_i)


# ---------------------------------------------------------------- launch
def dual_config(batch: int, head_dim: int, state_dtype: torch.dtype) -> dict:
    """Hand-picked launch configuration (no autotune: the state is updated in place).

    kernel "persistent" (heads whose W1, W2 fit whole, fp16/bf16 state) or "chunked". Persistent keys:
    STAGES (pipeline depth of the item loop: 2 = the next item staged while one computes),
    programs_per_sm, num_warps, last_num_warps (the end-of-mini-batch kernel), SPLIT_LAST (the update
    in its own kernel; False: a branch of the one kernel), maxnreg. Chosen from the H200 sweep
    recorded in exp/NOTES.md ("M2 dual, persistent")."""
    F = 4 * head_dim
    if pow2(F) > MAX_WHOLE_F or state_dtype == torch.float32:
        # fp32 tiles (2 x 64 KB at F = 256) leave no room to stage the next item.
        return {"kernel": "chunked", "BLOCK_F": 64, "num_warps": max(2, head_dim // 32)}
    return {"kernel": "persistent", "STAGES": 2, "programs_per_sm": 1, "num_warps": 8, "last_num_warps": 8,
            "SPLIT_LAST": True, "maxnreg": None}


def launch(q, k, v, eta, c, gamma, beta, pos, W1, b1, W2, b2, ck, cg1, cx2, cg2, out, config=None):
    """Run the dual step's kernels into out [B, H, f] with a launch configuration (default dual_config).

    The tensors as the custom op takes them; nothing is checked here (decode_step_dual checks)."""
    B, H, f = q.shape
    F = W1.shape[-1]
    b = ck.shape[2]
    cfg = config or dual_config(B, f, W1.dtype)
    strides = (q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), eta.stride(0),
               eta.stride(1))
    tensors = (q, k, v, eta, c, gamma, beta, pos, W1, b1, W2, b2, ck, cg1, cx2, cg2, out)
    shapes = dict(D=f, FH=F, MB=b, BLOCK_D=pow2(f), BLOCK_MB=max(16, pow2(b)), EPS=TTT_NORM_EPS)
    if cfg["kernel"] == "chunked":
        z1 = torch.empty(B * H * 2 * F, dtype=torch.float32, device=q.device)  # pass A's Z1, per item
        _m2_dual_chunked_kernel[(B * H,)](*tensors, z1, H, *strides, **shapes,
                                          BLOCK_F=min(cfg["BLOCK_F"], pow2(F)), PREFETCH=cfg.get("PREFETCH", True),
                                          UPD_F=min(cfg.get("UPD_F", 64), pow2(F)), **launch_options(cfg))
        return out
    grid = (persistent_grid(B * H, q.device, cfg["programs_per_sm"]),)
    common = dict(BLOCK_F=pow2(F), STAGES=cfg["STAGES"], EMULATE_BF16=interpreting(), **shapes)
    if cfg["SPLIT_LAST"]:
        _m2_dual_persistent_kernel[grid](*tensors, B * H, H, *strides, MODE=ORDINARY_POSITIONS.value, **common,
                                         **launch_options(cfg))
        last = {**cfg, "num_warps": cfg.get("last_num_warps") or cfg["num_warps"]}
        _m2_dual_persistent_kernel[grid](*tensors, B * H, H, *strides, MODE=LAST_POSITION.value, **common,
                                         **launch_options(last))
    else:
        _m2_dual_persistent_kernel[grid](*tensors, B * H, H, *strides, MODE=EVERY_POSITION.value, **common,
                                         **launch_options(cfg))
    return out


_MUTATED = ("W1", "b1", "W2", "b2", "cache_k", "cache_g1", "cache_x2", "cache_g2")


@torch.library.custom_op("ttt_decode::ttt_mlp_dual_step", mutates_args=_MUTATED)
def _dual_step_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, eta: torch.Tensor, c: torch.Tensor,
                  gamma: torch.Tensor, beta: torch.Tensor, pos: torch.Tensor, W1: torch.Tensor, b1: torch.Tensor,
                  W2: torch.Tensor, b2: torch.Tensor, cache_k: torch.Tensor, cache_g1: torch.Tensor,
                  cache_x2: torch.Tensor, cache_g2: torch.Tensor) -> torch.Tensor:
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)  # [B, H, f]
    return launch(q, k, v, eta, c, gamma, beta, pos, W1, b1, W2, b2, cache_k, cache_g1, cache_x2, cache_g2, out)


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
