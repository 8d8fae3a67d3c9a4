"""Triton primal-form decode step of TTT-Linear (M1), the published kernels' way; reference naive.decode_step_primal.

The baseline the dual form (triton_decode.py) is measured against. Per (sequence, head), i = pos:
    g = eta d/dZ 1/2 ||LN(k W1 + b1) - (v - k)||^2;  W1_grad += k^T g, b1_grad += g
    W1_bar = W1 - c_i W1_grad, b1_bar = b1 - c_i b1_grad;  out = q + LN(q W1_bar + b1_bar)
    i < b-1: W1_grad, b1_grad written;  i = b-1: W1 <- W1_bar, b1 <- b1_bar, gradients written as 0.

Compulsory bytes per call (s = state item size, a = activation item size), per (sequence, head):
    W1, b1 and W1_grad, b1_grad read, the gradients written: 3 (f^2 + f) s; at i = b-1 the state
    written (f^2 + f) s; q, k, v, out 4 f a, eta 4 bytes. Averaged over positions:
    ops.ttt_common.inner_step_cost(mlp=False, form="primal"): 3.06 state-sized transfers.
  ttt-1b (H 32, f 64, b 16), fp16 state: B = 512: 0.43 GB, floor 100 us at 4271 GB/s.
FLOPs per call per (sequence, head): 2 f^2 (k W1) + 2 f^2 (rank-1 gradient) + 2 f^2 (W1_bar) + 2 f^2 (q W1_bar).
Two designs (docs/DESIGN.md section 11): persistent (the default; programs loop over items with the
  next items' W1 and W1_grad staged in shared memory, k W1 and q W1 on the tensor cores, q W1_bar
  formed as q W1 - c_i (q W1_grad + ...) without W1_bar as a matrix) and per-item (one program per item
  holding W1 and W1_grad [f, f] in registers, the earlier design).
Mutates: cache.W1_grad, cache.b1_grad every call; state W1, b1 at pos = b-1. pos is read, never moved
  (advance=True moves it after the kernel).
Arithmetic in float32; hand-picked configurations (`primal_config`, from the H200 sweep in exp/NOTES.md),
no autotune.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ttt_decode.ops.ttt_common import TTT_NORM_EPS, PrimalCache, TTTState
from ttt_decode.ops.ttt_triton_common import (
    advance_pos,
    check_kernel_inputs,
    interpreting,
    launch_options,
    ln_fused_l2_bwd,
    ln_fwd,
    load_token_inputs,
    persistent_grid,
    pow2,
    rne,
    vec2_mat,
)


@triton.jit
def _m1_primal_persistent_kernel(
    q_ptr, k_ptr, v_ptr, eta_ptr, c_ptr, gamma_ptr, beta_ptr, pos_ptr,
    w1_ptr, b1_ptr, gw1_ptr, gb1_ptr, out_ptr,
    n_items, H, stride_qb, stride_qh, stride_kb, stride_kh, stride_vb, stride_vh, stride_eb, stride_eh,
    D: tl.constexpr, MB: tl.constexpr, BLOCK_D: tl.constexpr, EPS: tl.constexpr, STAGES: tl.constexpr,
    EMULATE_BF16: tl.constexpr,
):
    SDT: tl.constexpr = w1_ptr.dtype.element_ty
    pid = tl.program_id(0)
    n_prog = tl.num_programs(0)
    o_d = tl.arange(0, BLOCK_D)
    m_d = o_d < D
    m_dd = m_d[:, None] & m_d[None, :]
    o_dd = o_d[:, None] * D + o_d[None, :]
    pos = tl.load(pos_ptr).to(tl.int32)
    c_i = tl.load(c_ptr + pos).to(tl.float32)
    last = pos == MB - 1
    for item in tl.range(pid, n_items, n_prog, num_stages=STAGES):
        it = tl.cast(item, tl.int64)
        i_b = item // H
        i_h = item % H
        b_w1 = tl.load(w1_ptr + it * (D * D) + o_dd, mask=m_dd, other=0.0)  # [BD, BD]
        b_b1 = tl.load(b1_ptr + it * D + o_d, mask=m_d, other=0.0).to(tl.float32)
        b_gb1 = tl.load(gb1_ptr + it * D + o_d, mask=m_d, other=0.0).to(tl.float32)
        b_q = tl.load(q_ptr + i_b * stride_qb + i_h * stride_qh + o_d, mask=m_d, other=0.0).to(tl.float32)
        b_k = tl.load(k_ptr + i_b * stride_kb + i_h * stride_kh + o_d, mask=m_d, other=0.0).to(tl.float32)
        b_v = tl.load(v_ptr + i_b * stride_vb + i_h * stride_vh + o_d, mask=m_d, other=0.0).to(tl.float32)
        eta = tl.load(eta_ptr + i_b * stride_eb + i_h * stride_eh).to(tl.float32)
        gam = tl.load(gamma_ptr + i_h * D + o_d, mask=m_d, other=0.0).to(tl.float32)
        bet = tl.load(beta_ptr + i_h * D + o_d, mask=m_d, other=0.0).to(tl.float32)

        z1k, z1q = vec2_mat(b_k, b_q, b_w1, EMULATE_BF16)
        g = ln_fused_l2_bwd(z1k + b_b1, b_v - b_k, gam, bet, m_d, D, EPS) * eta  # [BD]
        b_gw1 = tl.load(gw1_ptr + it * (D * D) + o_dd, mask=m_dd, other=0.0)  # loaded where first used
        gw1 = b_gw1.to(tl.float32) + b_k[:, None] * g[None, :]  # [BD, BD]
        gb1 = b_gb1 + g
        # q W1_bar + b1_bar without forming W1_bar: q W1 + b1 - c_i (q W1_grad + b1_grad).
        z = z1q + b_b1 - (tl.sum(gw1 * b_q[:, None], 0) + gb1) * c_i
        out = b_q + ln_fwd(z, gam, bet, m_d, D, EPS)
        tl.store(out_ptr + it * D + o_d, rne(out, out_ptr.dtype.element_ty), mask=m_d)
        # Gradients restart at the end of the mini-batch, where W_bar becomes the state.
        tl.store(gw1_ptr + it * (D * D) + o_dd, rne(tl.where(last, 0.0, gw1), SDT), mask=m_dd)
        tl.store(gb1_ptr + it * D + o_d, rne(tl.where(last, 0.0, gb1), SDT), mask=m_d)
        if last:
            w1 = tl.load(w1_ptr + it * (D * D) + o_dd, mask=m_dd, other=0.0).to(tl.float32)  # again, from L2
            tl.store(w1_ptr + it * (D * D) + o_dd, rne(w1 - gw1 * c_i, SDT), mask=m_dd)
            tl.store(b1_ptr + it * D + o_d, rne(b_b1 - gb1 * c_i, SDT), mask=m_d)


@triton.jit
def _m1_primal_per_item_kernel(
    q_ptr, k_ptr, v_ptr, eta_ptr, c_ptr, gamma_ptr, beta_ptr, pos_ptr,
    w1_ptr, b1_ptr, gw1_ptr, gb1_ptr, out_ptr,
    H, stride_qb, stride_qh, stride_kb, stride_kh, stride_vb, stride_vh, stride_eb, stride_eh,
    D: tl.constexpr, MB: tl.constexpr, BLOCK_D: tl.constexpr, EPS: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    i_b = pid // H
    i_h = pid % H
    o_d = tl.arange(0, BLOCK_D)
    m_d = o_d < D
    m_dd = m_d[:, None] & m_d[None, :]
    o_dd = o_d[:, None] * D + o_d[None, :]
    pos = tl.load(pos_ptr).to(tl.int32)
    last = pos == MB - 1

    p_w1 = w1_ptr + pid * (D * D)
    p_gw1 = gw1_ptr + pid * (D * D)
    b_w1 = tl.load(p_w1 + o_dd, mask=m_dd, other=0.0).to(tl.float32)  # [BD, BD]
    b_gw1 = tl.load(p_gw1 + o_dd, mask=m_dd, other=0.0).to(tl.float32)
    b_b1 = tl.load(b1_ptr + pid * D + o_d, mask=m_d, other=0.0).to(tl.float32)
    b_gb1 = tl.load(gb1_ptr + pid * D + o_d, mask=m_d, other=0.0).to(tl.float32)
    b_q, b_k, b_v, eta, c_i, gam, bet = load_token_inputs(
        q_ptr, k_ptr, v_ptr, eta_ptr, c_ptr, gamma_ptr, beta_ptr, pos, i_b, i_h, o_d, m_d,
        stride_qb, stride_qh, stride_kb, stride_kh, stride_vb, stride_vh, stride_eb, stride_eh, D)  # [BD] each

    z1k = tl.sum(b_w1 * b_k[:, None], 0) + b_b1
    g = ln_fused_l2_bwd(z1k, b_v - b_k, gam, bet, m_d, D, EPS) * eta  # [BD]
    b_gw1 = b_gw1 + b_k[:, None] * g[None, :]
    b_gb1 = b_gb1 + g
    w_bar = b_w1 - c_i * b_gw1
    bias_bar = b_b1 - c_i * b_gb1
    z = tl.sum(w_bar * b_q[:, None], 0) + bias_bar
    out = b_q + ln_fwd(z, gam, bet, m_d, D, EPS)
    tl.store(out_ptr + pid * D + o_d, rne(out, out_ptr.dtype.element_ty), mask=m_d)

    # Gradients restart at the end of the mini-batch, where W_bar becomes the state.
    tl.store(p_gw1 + o_dd, rne(tl.where(last, 0.0, b_gw1), gw1_ptr.dtype.element_ty), mask=m_dd)
    tl.store(gb1_ptr + pid * D + o_d, rne(tl.where(last, 0.0, b_gb1), gb1_ptr.dtype.element_ty), mask=m_d)
    tl.store(p_w1 + o_dd, rne(w_bar, w1_ptr.dtype.element_ty), mask=m_dd & last)
    tl.store(b1_ptr + pid * D + o_d, rne(bias_bar, b1_ptr.dtype.element_ty), mask=m_d & last)


def primal_config(batch: int, head_dim: int, state_dtype: torch.dtype) -> dict:
    """Hand-picked launch configuration (no autotune: the state is updated in place).

    kernel "persistent" keys: STAGES, programs_per_sm, num_warps, maxnreg; kernel "per_item": num_warps.
    Chosen from the H200 sweep recorded in exp/NOTES.md ("M1 primal")."""
    return {"kernel": "persistent", "STAGES": 3, "programs_per_sm": 4, "num_warps": max(2, head_dim * head_dim // 2048),
            "maxnreg": None}


def launch(q, k, v, eta, c, gamma, beta, pos, W1, b1, gW1, gb1, out, config=None):
    """Run the primal step's kernel into out [B, H, f] with a launch configuration (default primal_config).

    The tensors as the custom op takes them; nothing is checked here (decode_step_primal checks)."""
    B, H, f = q.shape
    cfg = config or primal_config(B, f, W1.dtype)
    tensors = (q, k, v, eta, c, gamma, beta, pos, W1, b1, gW1, gb1, out)
    strides = (q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), eta.stride(0),
               eta.stride(1))
    shapes = dict(D=f, MB=c.shape[0], BLOCK_D=pow2(f), EPS=TTT_NORM_EPS)
    if cfg["kernel"] == "per_item":
        _m1_primal_per_item_kernel[(B * H,)](*tensors, H, *strides, **shapes, **launch_options(cfg))
        return out
    grid = (persistent_grid(B * H, q.device, cfg["programs_per_sm"]),)
    _m1_primal_persistent_kernel[grid](*tensors, B * H, H, *strides, **shapes, STAGES=cfg["STAGES"],
                                       EMULATE_BF16=interpreting(), **launch_options(cfg))
    return out


@torch.library.custom_op("ttt_decode::ttt_linear_primal_step", mutates_args=("W1", "b1", "W1_grad", "b1_grad"))
def _primal_step_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, eta: torch.Tensor, c: torch.Tensor,
                    gamma: torch.Tensor, beta: torch.Tensor, pos: torch.Tensor, W1: torch.Tensor, b1: torch.Tensor,
                    W1_grad: torch.Tensor, b1_grad: torch.Tensor) -> torch.Tensor:
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)  # [B, H, f]
    return launch(q, k, v, eta, c, gamma, beta, pos, W1, b1, W1_grad, b1_grad, out)


@_primal_step_op.register_fake
def _(q, k, v, eta, c, gamma, beta, pos, W1, b1, W1_grad, b1_grad):
    return torch.empty(q.shape, dtype=q.dtype, device=q.device)


def decode_step_primal(q, k, v, eta, c, gamma, beta, state: TTTState, cache: PrimalCache, advance: bool = True):
    """One token, primal form; same arguments and semantics as naive.decode_step_primal. -> out [B, H, f].

    Mutates: cache gradients (and pos if advance), state at the last mini-batch position."""
    check_kernel_inputs("ttt_linear primal decode", q, k, v, eta, c, gamma, beta, state, cache, mlp=False, dual=False)
    out = torch.ops.ttt_decode.ttt_linear_primal_step(q, k, v, eta, c, gamma, beta, cache.pos, state.W1, state.b1,
                                                      cache.W1_grad, cache.b1_grad)
    if advance:
        advance_pos(cache.pos, cache.mini_batch_size)
    return out
