"""Triton dual-form decode step of TTT-Linear (M1), DESIGN section 4; the reference is naive.decode_step_dual.

Per (sequence, head), f head dim, b mini-batch, i = pos (read from the device):
    g = d/dZ 1/2 ||LN(k W1 + b1) - (v - k)||^2;  cache row i <- (k, eta g)
    Z = q W1 + b1 - c_i sum_{s<=i} (q . k_s + 1) G_s,  out = q + LN(Z)
and at i = b-1, in the same launch: W1 -= c_{b-1} K^T G, b1 -= c_{b-1} sum_s G_s (G = eta g as stored,
i.e. rounded to the cache dtype, exactly as the reference reads it back).

Compulsory bytes per call (s = state/cache item size, a = activation item size), per (sequence, head):
    state read once (f^2 + f) s;  cache rows of earlier tokens read  i (2 f) s;  this token's row
    written 2 f s;  at i = b-1 the state written (f^2 + f) s;  q, k, v read and out written 4 f a,
    eta 4 bytes. Averaged over the b positions: ops.ttt_common.inner_step_cost(mlp=False, form="dual").
  ttt-1b (H 32, f 64, b 16), fp16 state: 1.39 state-sized transfers, 11.6 KB per sequence-head-call;
  B = 512: 0.19 GB, floor 44 us at 4271 GB/s.
FLOPs per call per (sequence, head): 4 f^2 (k W1, q W1) + 4 (i+1) f (cache terms) + at i = b-1 2 b f^2.
Grid: (B H,), one program per (sequence, head), 1 warp at f = 64, holding W1 [f, f] in registers
  (many small programs resident per multiprocessor hide the memory latency: H200 sweep, exp/NOTES.md).
Mutates: cache.k, cache.g1 (row pos), and at pos = b-1 state W1, b1. pos is read, never moved: with
  advance=True the wrapper moves it after the kernel (one tiny op).
Arithmetic in float32. No autotuning (state updated in place): a hand-picked configuration
(`dual_config`), from the H100 and H200 sweeps recorded in exp/NOTES.md.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ttt_decode.ops import ttt_triton_common as tc
from ttt_decode.ops.kernel_op import step_op
from ttt_decode.ops.ttt_block_triton import gate_norm_rows
from ttt_decode.ops.ttt_common import TTT_NORM_EPS, DualCache, GateNorm, TTTState


@triton.jit
def _m1_dual_kernel(
    q_ptr, k_ptr, v_ptr, eta_ptr, c_ptr, gamma_ptr, beta_ptr, pos_ptr,
    w1_ptr, b1_ptr, ck_ptr, cg1_ptr, out_ptr,
    H, stride_qb, stride_qh, stride_kb, stride_kh, stride_vb, stride_vh, stride_eb, stride_eh,
    # FUSED_QK: q, k, eta, c from qk_prep's inputs (tc.ring_token_inputs); q_ptr .. c_ptr are then unused
    p_ptr, ring_ptr, cpos_ptr, wq_ptr, bq_ptr, wk_ptr, bk_ptr, cos_ptr, sin_ptr, rpos_ptr, lrb_ptr, tok_ptr,
    stride_p, lr_col, eta_scale, dim,
    # GATE_NORM: ops.ttt_block.gate_norm of each finished row into y (tc.finish_row, tc.gn_kernel_args)
    y_ptr, nw_ptr, nb_ptr, cnt_ptr, g_col, gn_eps,
    D: tl.constexpr, MB: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_MB: tl.constexpr, EPS: tl.constexpr,
    UPDATE_DOT: tl.constexpr, FUSED_QK: tl.constexpr, HAS_QK_BIAS: tl.constexpr, WIDTH: tl.constexpr,
    GATE_NORM: tl.constexpr, HAS_GATE: tl.constexpr, BLOCK_ROW: tl.constexpr,
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
    if FUSED_QK:
        b_q, b_k, b_v, eta, c_i, gam, bet = tc.ring_token_inputs(
            p_ptr, ring_ptr, cpos_ptr, wq_ptr, bq_ptr, wk_ptr, bk_ptr, cos_ptr, sin_ptr, rpos_ptr, lrb_ptr, tok_ptr,
            v_ptr, gamma_ptr, beta_ptr, pos, i_b, i_h, o_d, m_d, stride_p, stride_vb, stride_vh, lr_col, eta_scale,
            dim, D, BLOCK_D, HAS_QK_BIAS, WIDTH)
    else:
        b_q, b_k, b_v, eta, c_i, gam, bet = tc.load_token_inputs(
            q_ptr, k_ptr, v_ptr, eta_ptr, c_ptr, gamma_ptr, beta_ptr, pos, i_b, i_h, o_d, m_d,
            stride_qb, stride_qh, stride_kb, stride_kh, stride_vb, stride_vh, stride_eb, stride_eh, D)  # [BD] each

    b_w1f = b_w1.to(tl.float32)  # [BD, BD]
    z1k = tl.sum(b_w1f * b_k[:, None], 0) + b_b1
    z1q = tl.sum(b_w1f * b_q[:, None], 0) + b_b1
    gt = tc.rne(tc.ln_fused_l2_bwd(z1k, b_v - b_k, gam, bet, m_d, D, EPS) * eta, CACHE_DT)
    k_r = tc.rne(b_k, CACHE_DT)
    tl.store(p_ck + pos * D + o_d, k_r, mask=m_d)
    tl.store(p_cg + pos * D + o_d, gt, mask=m_d)
    k_r = k_r.to(tl.float32)
    gt = gt.to(tl.float32)

    b_kc = tl.where(m_cur[:, None], k_r[None, :], b_kc.to(tl.float32))
    b_gc = tl.where(m_cur[:, None], gt[None, :], b_gc.to(tl.float32))
    a1 = tl.where(m_rows, tl.sum(b_kc * b_q[None, :], 1) + 1.0, 0.0)  # [BMB]
    z = z1q - c_i * tl.sum(a1[:, None] * b_gc, 0)
    out = b_q + tc.ln_fwd(z, gam, bet, m_d, D, EPS)
    tl.store(out_ptr + pid * D + o_d, tc.rne(out, out_ptr.dtype.element_ty), mask=m_d)

    # End of the mini-batch (c_i is c_{b-1} here): the rank-b update from the cache rows, which then
    # become stale. This token's row was stored by other threads: the barrier makes it visible.
    if pos == MB - 1:
        tl.debug_barrier()
        m_all = o_s < MB
        tc.update_tile(p_w1, p_ck, p_cg, o_d, m_d, o_d, m_d, o_s, m_all, D, D, D, c_i, MB, UPDATE_DOT)
        tc.update_bias(p_b1, p_cg, o_d, m_d, o_s, m_all, D, c_i)
    if GATE_NORM:
        tc.finish_row(out_ptr, y_ptr, nw_ptr, nb_ptr, cnt_ptr, p_ptr, i_b, H, stride_p, g_col, gn_eps, D, BLOCK_ROW,
                      HAS_GATE)


GLUON_MIN_BATCH = 128  # batches from which the Gluon kernel is the default (H200, ttt-1b's 32 heads)


def dual_config(batch: int, head_dim: int, state_dtype: torch.dtype) -> dict:
    """Hand-picked launch configuration (no autotune: the state is updated in place); one for every batch.

    One warp per program holds the [64, 64] W tile in registers and lets the most programs stay
    resident. H100 (exp/results/h100/kernels_runA.jsonl): 80.9 us at B = 512 (78.5% of copy
    bandwidth) vs 123.8 us with 2 warps, 162 us with 4. H200 (exp/NOTES.md, "H200 kernel sweeps"):
    66 us; register caps (more programs per multiprocessor), the update in narrower slices, 2 warps and
    persistent programs with the next items staged in shared memory all read 66-222 us. The warps
    grow with the tile so that f = 128 does not spill. From GLUON_MIN_BATCH on, fp16 state at f = 64
    runs the Gluon kernel instead (GLUON: True; launch falls back to this one where
    gluon_decode.supported refuses the inputs, e.g. on CPU)."""
    cfg = {"num_warps": max(1, head_dim * head_dim // 4096), "maxnreg": None, "UPDATE_DOT": True}
    if state_dtype == torch.float16 and head_dim == 64 and batch >= GLUON_MIN_BATCH:
        # The Gluon kernel (gluon_decode.py; taken where gluon_decode.supported says, on CUDA): 52 us at
        # B = 512 (86% of copy bandwidth) against this kernel's 66 us, 94.5% at B = 2048; at B = 64 it is
        # 4% slower (its persistent programs get only ~2 items each). Record:
        # exp/results/h200/kernel_sweep_round6_h200_cb8487c.jsonl.
        # GLUON_QK: with qk_prep's inputs (the model's fused step), the Gluon kernel does qk_prep's work
        # too (7 SASS instructions more an item, offline for sm_90, and one launch less a layer).
        cfg.update(GLUON=True, programs_per_sm=8, rows=16, GLUON_QK=True)
    # GATE_NORM: the model's post-norm and gate folded into the kernel (tc.finish_row) rather than gate_norm's own
    # kernel after it. Off for M1: a program's 2048-column row tail and the release fence before each count cost
    # more than the launch saved. H100, B = 512 (exp/results/h100/gate_norm_fold_h100_fc257ad/): Gluon 78.8 us
    # with gate_norm's kernel against 124.1 folded (counts after the loop: one program of each group of 32
    # finishes all its group's rows) and 185.9 (counted an item late, since removed: a MEMBAR.ALL.GPU each item
    # drains the cp.async pipeline); the Triton kernel 86.3 against 99.4.
    cfg["GATE_NORM"] = False
    return cfg


def _qk_prep(qk: dict, heads: int):
    """q, k, eta, c from qk_prep's kernel (ops/ttt_block_triton.py) for the inputs of a fused call."""
    from ttt_decode.ops import ttt_block_triton  # noqa: PLC0415 (the block's kernels: only this path needs them)

    args = [qk[n] for n in tc.QK_NAMES]
    return ttt_block_triton.qk_prep_launch(*args, qk["base_lr"], heads, qk["lr_col"])


def launch(q, k, v, eta, c, gamma, beta, pos, W1, b1, ck, cg1, out, config=None, qk=None, gn=None):
    """Run the dual step's kernel into out [B, H, f] with a launch configuration (default dual_config).

    The tensors as the custom op takes them; nothing is checked here (decode_step_dual checks). qk:
    qk_prep's inputs (tc.qk_kernel_args), computed into q, k, eta, c in the kernel's prologue; q, k,
    eta, c are then None. Where the configuration picks the Gluon kernel, it does qk_prep's work too
    (GLUON_QK, where gluon_decode.qk_supported takes the inputs), else qk_prep's kernel runs first and
    the Gluon kernel reads its outputs (two launches). gn (with qk only): the post-norm and gate of the rows
    into gn["y"] as well (tc.gn_kernel_args): in the kernel where the configuration says GATE_NORM (and the
    kernel does qk_prep's work), else by gate_norm's own kernel after it."""
    B, H, f = v.shape
    cfg = config or dual_config(B, f, W1.dtype)
    p = qk["p"] if qk is not None else None  # the gate's columns, for gn
    if cfg.get("GLUON"):
        from ttt_decode.ops.ttt_linear import gluon_decode  # noqa: PLC0415 (experimental API: imported where used)

        if gluon_decode.supported(v, v, v, gamma, beta, W1, b1, ck, cg1):
            kw = dict(programs_per_sm=cfg.get("programs_per_sm", 8), rows=cfg.get("rows", 16))
            if qk is not None and cfg.get("GLUON_QK") and gluon_decode.qk_supported(qk, v):
                # qk_prep's work in the Gluon kernel, one item ahead of the item it computes (no launch of
                # its own, q and k never in memory; exp/NOTES.md, fourteenth session).
                fold = gn if cfg.get("GATE_NORM") else None
                gluon_decode.launch(None, None, v, None, None, gamma, beta, pos, W1, b1, ck, cg1, out, qk=qk, gn=fold,
                                    **kw)
                return gate_norm_rows(out, p, gn if fold is None else None)
            if qk is not None:
                # qk_prep's own kernel first (GLUON_QK off, or inputs the fused prologue does not take).
                q, k, eta, c = _qk_prep(qk, H)
            if gluon_decode.supported(q, k, v, gamma, beta, W1, b1, ck, cg1):
                gluon_decode.launch(q, k, v, eta, c, gamma, beta, pos, W1, b1, ck, cg1, out, **kw)
                return gate_norm_rows(out, p, gn)
            qk = None  # q, k, eta, c are computed: the Triton kernel reads them
    if qk is not None:
        q = k = eta = c = v  # placeholders: the kernel computes them
    qk_args, qk_consts = tc.qk_kernel_args(qk, v, f)
    fused_gn = gn if qk is not None and cfg.get("GATE_NORM") else None  # with the fused prologue only
    gn_args, gn_consts = tc.gn_kernel_args(fused_gn, v, H * f)
    _m1_dual_kernel[(B * H,)](
        q, k, v, eta, c, gamma, beta, pos, W1, b1, ck, cg1, out,
        H, q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), eta.stride(0), eta.stride(1),
        *qk_args, *gn_args, D=f, MB=ck.shape[2], BLOCK_D=tc.pow2(f), BLOCK_MB=max(16, tc.pow2(ck.shape[2])),
        EPS=TTT_NORM_EPS, UPDATE_DOT=cfg["UPDATE_DOT"], **qk_consts, **gn_consts, **tc.launch_options(cfg))
    return gate_norm_rows(out, p, gn if fused_gn is None else None)


step_op("ttt_linear_dual_step", ("q", "k", "v", "eta", "c", "gamma", "beta", "pos", "W1", "b1", "cache_k", "cache_g1"),
        ("W1", "b1", "cache_k", "cache_g1"), launch)
tc.qk_step_op("ttt_linear_dual_step_qk", ("W1", "b1", "cache_k", "cache_g1"), ("W1", "b1", "cache_k", "cache_g1"),
              launch)


def decode_step_dual(q, k, v, eta, c, gamma, beta, state: TTTState, cache: DualCache, advance: bool = True):
    """One token, dual form; same arguments and semantics as naive.decode_step_dual. -> out [B, H, f].

    Mutates: cache rows at pos (and pos itself if advance), state at the last mini-batch position."""
    tc.check_kernel_inputs("ttt_linear dual decode", q, k, v, eta, c, gamma, beta, state, cache, mlp=False, dual=True)
    out = torch.ops.ttt_decode.ttt_linear_dual_step(q, k, v, eta, c, gamma, beta, cache.pos, state.W1, state.b1,
                                                    cache.k, cache.g1)
    if advance:
        tc.advance_pos(cache.pos, cache.mini_batch_size)
    return out


def decode_step_dual_qk(p, ring, conv_pos, wq, bq, wk, bk, rope_cos, rope_sin, rot_pos, lr_bias, token_idx,
                        base_lr: float, num_heads: int, lr_col: int, v_col: int, gamma, beta, state: TTTState,
                        cache: DualCache, advance: bool = True, gate_norm: GateNorm | None = None):
    """ops.ttt_block.qk_prep's arguments, then decode_step_dual's without q, k, eta, c (and v as the
    columns v_col .. v_col + H f of p): the same function as qk_prep followed by decode_step_dual, with
    qk_prep's work done in the kernel's prologue (one launch instead of two, and q, k never written to
    memory). -> out [B, H, f]; with gate_norm, ops.ttt_block.gate_norm of out's rows (heads flattened) as
    well, and the result is o_proj's input y [B, H f]: in the kernel where dual_config says GATE_NORM (one
    launch instead of two), else by gate_norm's kernel after it.

    Mutates: ring (q0 into slot conv_pos), the cache rows at pos (and pos if advance), the state at
    the last mini-batch position (and gate_norm's counters, zero again when it returns)."""
    tc.check_qk_step_inputs("ttt_linear dual decode", p, ring, conv_pos, wq, bq, wk, bk, rope_cos, rope_sin, rot_pos,
                            lr_bias, token_idx, num_heads, lr_col, v_col, gamma, beta, state, cache, mlp=False)
    qk = (p, ring, conv_pos, wq, bq, wk, bk, rope_cos, rope_sin, rot_pos, lr_bias, token_idx)
    tensors = (gamma, beta, cache.pos, state.W1, state.b1, cache.k, cache.g1)
    return tc.run_qk_step("ttt_linear dual decode", torch.ops.ttt_decode.ttt_linear_dual_step_qk,
                          torch.ops.ttt_decode.ttt_linear_dual_step_qk_gn, qk, tensors, base_lr, lr_col, v_col, gamma,
                          cache, advance, gate_norm)
