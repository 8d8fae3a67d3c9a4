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
Grid: (B H,), one program per (sequence, head), holding W1 and W1_grad [f, f] in registers.
Mutates: cache.W1_grad, cache.b1_grad every call; state W1, b1 at pos = b-1. pos is read, never moved
  (advance=True moves it after the kernel).
Arithmetic in float32; hand-picked configurations (`primal_config`), no autotune.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ttt_decode.ops import ttt_triton_common as tc
from ttt_decode.ops.kernel_op import step_op
from ttt_decode.ops.ttt_common import TTT_NORM_EPS, PrimalCache, TTTState


@triton.jit
def _m1_primal_kernel(
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
    b_q, b_k, b_v, eta, c_i, gam, bet = tc.load_token_inputs(
        q_ptr, k_ptr, v_ptr, eta_ptr, c_ptr, gamma_ptr, beta_ptr, pos, i_b, i_h, o_d, m_d,
        stride_qb, stride_qh, stride_kb, stride_kh, stride_vb, stride_vh, stride_eb, stride_eh, D)  # [BD] each

    z1k = tl.sum(b_w1 * b_k[:, None], 0) + b_b1
    g = tc.ln_fused_l2_bwd(z1k, b_v - b_k, gam, bet, m_d, D, EPS) * eta  # [BD]
    b_gw1 = b_gw1 + b_k[:, None] * g[None, :]
    b_gb1 = b_gb1 + g
    w_bar = b_w1 - c_i * b_gw1
    bias_bar = b_b1 - c_i * b_gb1
    z = tl.sum(w_bar * b_q[:, None], 0) + bias_bar
    out = b_q + tc.ln_fwd(z, gam, bet, m_d, D, EPS)
    tl.store(out_ptr + pid * D + o_d, tc.rne(out, out_ptr.dtype.element_ty), mask=m_d)

    # Gradients restart at the end of the mini-batch, where W_bar becomes the state.
    tl.store(p_gw1 + o_dd, tc.rne(tl.where(last, 0.0, b_gw1), gw1_ptr.dtype.element_ty), mask=m_dd)
    tl.store(gb1_ptr + pid * D + o_d, tc.rne(tl.where(last, 0.0, b_gb1), gb1_ptr.dtype.element_ty), mask=m_d)
    tl.store(p_w1 + o_dd, tc.rne(w_bar, w1_ptr.dtype.element_ty), mask=m_dd & last)
    tl.store(b1_ptr + pid * D + o_d, tc.rne(bias_bar, b1_ptr.dtype.element_ty), mask=m_d & last)


GLUON_MIN_BATCH = 64  # batches from which the Gluon kernel is the default (fp16 state, f = 64)


def primal_config(batch: int, head_dim: int, state_dtype: torch.dtype) -> dict:
    """Hand-picked launch configuration (no autotune: the state is updated in place); one for every batch.

    H100 sweep at B=512 (exp/results/h100/kernels_runA.jsonl): 2 warps 159.6 us (89.8% of copy
    bandwidth), 4 warps 165.8 us, 1 warp 194 us. H200 (exp/NOTES.md, "H200 kernel sweeps"): 134 us; 1 or
    4 warps, register caps and persistent programs 147-425 us. More warps for f = 128's four-times larger
    tile. From GLUON_MIN_BATCH on, fp16 state at f = 64 runs the Gluon kernel (gluon_primal.py) instead
    (GLUON: True; launch falls back to this one where gluon_primal.supported refuses the inputs)."""
    cfg = {"num_warps": max(2, head_dim * head_dim // 2048)}
    if state_dtype == torch.float16 and head_dim == 64 and batch >= GLUON_MIN_BATCH:
        # H200, one run (exp/results/h200/kernel_sweep_round8_h200_d24efa7.jsonl): at B = 64 / 128 / 512
        # 12.2 / 29.8 / 114.9 us with 4 programs a multiprocessor (6: 12.1 / 29.1 / 118.2) against this
        # kernel's 17.1 / 38.8 / 134.6; 223 us at B = 1024 (90.6% of copy bandwidth), 437 at 2048 (92.3%).
        cfg.update(GLUON=True, programs_per_sm=4, rows=16)
    return cfg


def launch(q, k, v, eta, c, gamma, beta, pos, W1, b1, gW1, gb1, out, config=None):
    """Run the primal step's kernel into out [B, H, f] with a launch configuration (default primal_config).

    The tensors as the custom op takes them; nothing is checked here (decode_step_primal checks)."""
    B, H, f = q.shape
    cfg = config or primal_config(B, f, W1.dtype)
    if cfg.get("GLUON"):
        from ttt_decode.ops.ttt_linear import gluon_primal  # noqa: PLC0415 (experimental API: imported where used)

        if gluon_primal.supported(q, k, v, gamma, beta, W1, b1, gW1, gb1):
            return gluon_primal.launch(q, k, v, eta, c, gamma, beta, pos, W1, b1, gW1, gb1, out,
                                       programs_per_sm=cfg.get("programs_per_sm", 6), rows=cfg.get("rows", 16))
    _m1_primal_kernel[(B * H,)](
        q, k, v, eta, c, gamma, beta, pos, W1, b1, gW1, gb1, out,
        H, q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), eta.stride(0), eta.stride(1),
        D=f, MB=c.shape[0], BLOCK_D=tc.pow2(f), EPS=TTT_NORM_EPS, **tc.launch_options(cfg))
    return out


step_op("ttt_linear_primal_step", ("q", "k", "v", "eta", "c", "gamma", "beta", "pos", "W1", "b1", "W1_grad", "b1_grad"),
        ("W1", "b1", "W1_grad", "b1_grad"), launch)


def decode_step_primal(q, k, v, eta, c, gamma, beta, state: TTTState, cache: PrimalCache, advance: bool = True):
    """One token, primal form; same arguments and semantics as naive.decode_step_primal. -> out [B, H, f].

    Mutates: cache gradients (and pos if advance), state at the last mini-batch position."""
    tc.check_kernel_inputs("ttt_linear primal decode", q, k, v, eta, c, gamma, beta, state, cache, mlp=False,
                           dual=False)
    out = torch.ops.ttt_decode.ttt_linear_primal_step(q, k, v, eta, c, gamma, beta, cache.pos, state.W1, state.b1,
                                                      cache.W1_grad, cache.b1_grad)
    if advance:
        tc.advance_pos(cache.pos, cache.mini_batch_size)
    return out
