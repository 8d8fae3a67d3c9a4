"""Triton dual-form decode step of TTT-Linear (M1), DESIGN section 4; the reference is naive.decode_step_dual.

Per (sequence, head) item, f head dim, b mini-batch, i = pos (read from the device):
    g = d/dZ 1/2 ||LN(k W1 + b1) - (v - k)||^2;  cache row i <- (k, eta g)
    Z = q W1 + b1 - c_i sum_{s<=i} (q . k_s + 1) G_s,  out = q + LN(Z)
and at i = b-1: W1 -= c_{b-1} K^T G, b1 -= c_{b-1} sum_s G_s (G = eta g as stored, i.e. rounded to the
cache dtype, exactly as the reference reads it back).

Compulsory bytes per call (s = state/cache item size, a = activation item size), per item:
    state read once (f^2 + f) s;  cache rows of earlier tokens read  i (2 f) s;  this token's row
    written 2 f s;  at i = b-1 the state written (f^2 + f) s;  q, k, v read and out written 4 f a,
    eta 4 bytes. Averaged over the b positions: ops.ttt_common.inner_step_cost(mlp=False, form="dual").
  ttt-1b (H 32, f 64, b 16), fp16 state: 11.6 KB per item and call; B = 512: 0.19 GB, floor 44 us at
  4271 GB/s.
FLOPs per item: 4 f^2 (k W1, q W1) + 4 (i+1) f (cache terms) + at i = b-1 2 b f^2.

Two designs (docs/DESIGN.md section 11):
- persistent (the default): `programs_per_sm` programs per multiprocessor loop over items with
  `tl.range(num_stages=STAGES)`, so that the next STAGES-1 items' W1 and cache rows are staged in
  shared memory (async copies) while one computes; k W1 and q W1 in one tensor-core product
  (ttt_triton_common.vec2_mat); the update at i = b-1 a branch of the same kernel (MODE 0) or its own
  kernel (MODE 1 + MODE 2, as in the M2 kernel).
- per-item: one program per item holding W1 [f, f] in registers (the earlier design, kept for the
  comparison in exp/NOTES.md).
Mutates: cache.k, cache.g1 (row pos), and at pos = b-1 state W1, b1. pos is read, never moved: with
  advance=True the wrapper moves it after the kernel (one tiny op).
Arithmetic in float32. No autotuning (state updated in place): hand-picked configurations per batch
bucket (`dual_config`), from the H200 sweep in exp/NOTES.md.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ttt_decode.ops.ttt_common import TTT_NORM_EPS, DualCache, TTTState
from ttt_decode.ops.ttt_triton_common import (
    advance_pos,
    check_kernel_inputs,
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
    vec2_mat,
)

# MODE of the persistent kernel: which mini-batch positions a launch serves.
EVERY_POSITION = tl.constexpr(0)
ORDINARY_POSITIONS = tl.constexpr(1)  # all but the last; the launch does nothing at the last
LAST_POSITION = tl.constexpr(2)  # only the last (with the state update); nothing elsewhere


@triton.jit
def _m1_dual_persistent_kernel(
    q_ptr, k_ptr, v_ptr, eta_ptr, c_ptr, gamma_ptr, beta_ptr, pos_ptr,
    w1_ptr, b1_ptr, ck_ptr, cg1_ptr, out_ptr,
    n_items, H, stride_qb, stride_qh, stride_kb, stride_kh, stride_vb, stride_vh, stride_eb, stride_eh,
    D: tl.constexpr, MB: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_MB: tl.constexpr, EPS: tl.constexpr,
    MODE: tl.constexpr, STAGES: tl.constexpr, EMULATE_BF16: tl.constexpr,
):
    CDT: tl.constexpr = ck_ptr.dtype.element_ty
    pid = tl.program_id(0)
    n_prog = tl.num_programs(0)
    o_d = tl.arange(0, BLOCK_D)
    m_d = o_d < D
    m_dd = m_d[:, None] & m_d[None, :]
    o_dd = o_d[:, None] * D + o_d[None, :]
    o_s = tl.arange(0, BLOCK_MB)
    pos = tl.load(pos_ptr).to(tl.int32)
    c_i = tl.load(c_ptr + pos).to(tl.float32)
    last = pos == MB - 1
    # Rows written by the earlier tokens of this mini-batch; this token's row comes from registers.
    m_old = o_s < pos
    m_rows = m_old[:, None] & m_d[None, :]
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
        p_cg = cg1_ptr + it * (MB * D)
        b_w1 = tl.load(w1_ptr + it * (D * D) + o_dd, mask=m_dd, other=0.0)  # [BD, BD]
        b_b1 = tl.load(b1_ptr + it * D + o_d, mask=m_d, other=0.0).to(tl.float32)
        b_kc = tl.load(p_ck + o_s[:, None] * D + o_d[None, :], mask=m_rows, other=0.0)  # [BMB, BD]
        b_gc = tl.load(p_cg + o_s[:, None] * D + o_d[None, :], mask=m_rows, other=0.0)
        b_q = tl.load(q_ptr + i_b * stride_qb + i_h * stride_qh + o_d, mask=m_d, other=0.0).to(tl.float32)
        b_k = tl.load(k_ptr + i_b * stride_kb + i_h * stride_kh + o_d, mask=m_d, other=0.0).to(tl.float32)
        b_v = tl.load(v_ptr + i_b * stride_vb + i_h * stride_vh + o_d, mask=m_d, other=0.0).to(tl.float32)
        eta = tl.load(eta_ptr + i_b * stride_eb + i_h * stride_eh).to(tl.float32)
        gam = tl.load(gamma_ptr + i_h * D + o_d, mask=m_d, other=0.0).to(tl.float32)
        bet = tl.load(beta_ptr + i_h * D + o_d, mask=m_d, other=0.0).to(tl.float32)

        z1k, z1q = vec2_mat(b_k, b_q, b_w1, EMULATE_BF16)
        g_r = rne(ln_fused_l2_bwd(z1k + b_b1, b_v - b_k, gam, bet, m_d, D, EPS) * eta, CDT)
        k_r = rne(b_k, CDT)
        tl.store(p_ck + pos * D + o_d, k_r, mask=m_d)
        tl.store(p_cg + pos * D + o_d, g_r, mask=m_d)
        a1 = tl.where(m_old, tl.sum(b_kc.to(tl.float32) * b_q[None, :], 1) + 1.0, 0.0)  # [BMB]
        a1_i = tl.sum(k_r.to(tl.float32) * b_q, 0) + 1.0
        z = z1q + b_b1 - (tl.sum(a1[:, None] * b_gc.to(tl.float32), 0) + g_r.to(tl.float32) * a1_i) * c_i
        out = b_q + ln_fwd(z, gam, bet, m_d, D, EPS)
        tl.store(out_ptr + it * D + o_d, rne(out, out_ptr.dtype.element_ty), mask=m_d)

        if MODE != ORDINARY_POSITIONS:
            if last:
                # End of the mini-batch (c_i is c_{b-1} here): the rank-b update from all b rows.
                cur = (o_s == pos)[:, None]
                kf = tl.where(cur, k_r[None, :], b_kc)
                gf = tl.where(cur, g_r[None, :], b_gc)
                # W1 read again under the branch (plain loads, from L2): the pipelined tile stays a dot
                # operand and holds no registers in the update's layout.
                w1 = tl.load(w1_ptr + it * (D * D) + o_dd, mask=m_dd, other=0.0).to(tl.float32)
                w1 -= mma(tl.trans(kf), gf, EMULATE_BF16) * c_i
                tl.store(w1_ptr + it * (D * D) + o_dd, rne(w1, w1_ptr.dtype.element_ty), mask=m_dd)
                b1 = b_b1 - tl.sum(gf.to(tl.float32), 0) * c_i
                tl.store(b1_ptr + it * D + o_d, rne(b1, b1_ptr.dtype.element_ty), mask=m_d)


@triton.jit
def _m1_dual_per_item_kernel(
    q_ptr, k_ptr, v_ptr, eta_ptr, c_ptr, gamma_ptr, beta_ptr, pos_ptr,
    w1_ptr, b1_ptr, ck_ptr, cg1_ptr, out_ptr,
    H, stride_qb, stride_qh, stride_kb, stride_kh, stride_vb, stride_vh, stride_eb, stride_eh,
    D: tl.constexpr, MB: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_MB: tl.constexpr, EPS: tl.constexpr,
    UPDATE_DOT: tl.constexpr, UPD_F: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    i_b = pid // H
    i_h = pid % H
    CACHE_DT: tl.constexpr = ck_ptr.dtype.element_ty
    o_d = tl.arange(0, BLOCK_D)
    m_d = o_d < D
    o_s = tl.arange(0, BLOCK_MB)
    pos = tl.load(pos_ptr).to(tl.int32)
    # Rows written by the earlier tokens of this mini-batch; this token's row comes from registers.
    m_old = o_s < pos
    m_cur = o_s == pos
    m_rows = m_old | m_cur
    m_old2 = m_old[:, None] & m_d[None, :]

    p_w1 = w1_ptr + pid * (D * D)
    p_b1 = b1_ptr + pid * D
    p_ck = ck_ptr + pid * (MB * D)
    p_cg = cg1_ptr + pid * (MB * D)

    # The state tile first: the one large transfer, in flight while the small inputs arrive.
    b_w1 = tl.load(p_w1 + o_d[:, None] * D + o_d[None, :], mask=m_d[:, None] & m_d[None, :], other=0.0)
    b_kc = tl.load(p_ck + o_s[:, None] * D + o_d[None, :], mask=m_old2, other=0.0)  # [BMB, BD]
    b_gc = tl.load(p_cg + o_s[:, None] * D + o_d[None, :], mask=m_old2, other=0.0)
    b_b1 = tl.load(p_b1 + o_d, mask=m_d, other=0.0).to(tl.float32)
    b_q, b_k, b_v, eta, c_i, gam, bet = load_token_inputs(
        q_ptr, k_ptr, v_ptr, eta_ptr, c_ptr, gamma_ptr, beta_ptr, pos, i_b, i_h, o_d, m_d,
        stride_qb, stride_qh, stride_kb, stride_kh, stride_vb, stride_vh, stride_eb, stride_eh, D)  # [BD] each

    b_w1f = b_w1.to(tl.float32)  # [BD, BD]
    z1k = tl.sum(b_w1f * b_k[:, None], 0) + b_b1
    z1q = tl.sum(b_w1f * b_q[:, None], 0) + b_b1
    gt = rne(ln_fused_l2_bwd(z1k, b_v - b_k, gam, bet, m_d, D, EPS) * eta, CACHE_DT)
    k_r = rne(b_k, CACHE_DT)
    tl.store(p_ck + pos * D + o_d, k_r, mask=m_d)
    tl.store(p_cg + pos * D + o_d, gt, mask=m_d)
    k_r = k_r.to(tl.float32)
    gt = gt.to(tl.float32)

    b_kc = tl.where(m_cur[:, None], k_r[None, :], b_kc.to(tl.float32))
    b_gc = tl.where(m_cur[:, None], gt[None, :], b_gc.to(tl.float32))
    a1 = tl.where(m_rows, tl.sum(b_kc * b_q[None, :], 1) + 1.0, 0.0)  # [BMB]
    z = z1q - c_i * tl.sum(a1[:, None] * b_gc, 0)
    out = b_q + ln_fwd(z, gam, bet, m_d, D, EPS)
    tl.store(out_ptr + pid * D + o_d, rne(out, out_ptr.dtype.element_ty), mask=m_d)

    # End of the mini-batch (c_i is c_{b-1} here): the rank-b update from the cache rows, which then
    # become stale. This token's row was stored by other threads: the barrier makes it visible.
    if pos == MB - 1:
        tl.debug_barrier()
        m_all = o_s < MB
        # In column slices of UPD_F: the [f, UPD_F] float32 accumulator is what sizes the kernel's
        # registers (all positions pay for the largest live set, not only this one).
        o_u0 = tl.arange(0, UPD_F)
        for ci in range((D + UPD_F - 1) // UPD_F):
            o_u = ci * UPD_F + o_u0
            m_u = o_u < D
            update_tile(p_w1, p_ck, p_cg, o_d, m_d, o_u, m_u, o_s, m_all, D, D, D, c_i, MB, UPDATE_DOT)
            update_bias(p_b1, p_cg, o_u, m_u, o_s, m_all, D, c_i)


def dual_config(batch: int, head_dim: int, state_dtype: torch.dtype) -> dict:
    """Hand-picked launch configuration (no autotune: the state is updated in place).

    kernel "persistent" keys: STAGES, programs_per_sm, num_warps, SPLIT_LAST (the update in its own
    kernel), maxnreg; kernel "per_item": num_warps, UPDATE_DOT. Chosen from the H200 sweep recorded in
    exp/NOTES.md ("M1 dual, persistent")."""
    return {"kernel": "persistent", "STAGES": 3, "programs_per_sm": 8, "num_warps": max(1, head_dim * head_dim // 4096),
            "SPLIT_LAST": False, "maxnreg": None}


def launch(q, k, v, eta, c, gamma, beta, pos, W1, b1, ck, cg1, out, config=None):
    """Run the dual step's kernel(s) into out [B, H, f] with a launch configuration (default dual_config).

    The tensors as the custom op takes them; nothing is checked here (decode_step_dual checks)."""
    B, H, f = q.shape
    cfg = config or dual_config(B, f, W1.dtype)
    tensors = (q, k, v, eta, c, gamma, beta, pos, W1, b1, ck, cg1, out)
    strides = (q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), eta.stride(0),
               eta.stride(1))
    shapes = dict(D=f, MB=ck.shape[2], BLOCK_D=pow2(f), BLOCK_MB=max(16, pow2(ck.shape[2])), EPS=TTT_NORM_EPS)
    if cfg["kernel"] == "per_item":
        _m1_dual_per_item_kernel[(B * H,)](*tensors, H, *strides, **shapes, UPDATE_DOT=cfg["UPDATE_DOT"],
                                           UPD_F=min(cfg.get("UPD_F", 64), pow2(f)), **launch_options(cfg))
        return out
    grid = (persistent_grid(B * H, q.device, cfg["programs_per_sm"]),)
    common = dict(STAGES=cfg["STAGES"], EMULATE_BF16=interpreting(), **shapes)
    modes = (ORDINARY_POSITIONS, LAST_POSITION) if cfg["SPLIT_LAST"] else (EVERY_POSITION,)
    for mode in modes:
        _m1_dual_persistent_kernel[grid](*tensors, B * H, H, *strides, MODE=mode.value, **common,
                                         **launch_options(cfg))
    return out


@torch.library.custom_op("ttt_decode::ttt_linear_dual_step", mutates_args=("W1", "b1", "cache_k", "cache_g1"))
def _dual_step_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, eta: torch.Tensor, c: torch.Tensor,
                  gamma: torch.Tensor, beta: torch.Tensor, pos: torch.Tensor, W1: torch.Tensor, b1: torch.Tensor,
                  cache_k: torch.Tensor, cache_g1: torch.Tensor) -> torch.Tensor:
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)  # [B, H, f]
    return launch(q, k, v, eta, c, gamma, beta, pos, W1, b1, cache_k, cache_g1, out)


@_dual_step_op.register_fake
def _(q, k, v, eta, c, gamma, beta, pos, W1, b1, cache_k, cache_g1):
    return torch.empty(q.shape, dtype=q.dtype, device=q.device)


def decode_step_dual(q, k, v, eta, c, gamma, beta, state: TTTState, cache: DualCache, advance: bool = True):
    """One token, dual form; same arguments and semantics as naive.decode_step_dual. -> out [B, H, f].

    Mutates: cache rows at pos (and pos itself if advance), state at the last mini-batch position."""
    check_kernel_inputs("ttt_linear dual decode", q, k, v, eta, c, gamma, beta, state, cache, mlp=False, dual=True)
    out = torch.ops.ttt_decode.ttt_linear_dual_step(q, k, v, eta, c, gamma, beta, cache.pos, state.W1, state.b1,
                                                    cache.k, cache.g1)
    if advance:
        advance_pos(cache.pos, cache.mini_batch_size)
    return out
