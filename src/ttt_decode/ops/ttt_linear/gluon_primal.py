"""Gluon primal-form decode step of TTT-Linear (M1) for fp16 state at f = 64; the reference is
naive.decode_step_primal, the same function as triton_primal.py's kernel.

Why a second kernel: the Triton kernel holds an item's W1 and W1_grad [64, 64] in registers and
waits for both before its chain runs: 134 us at B = 512 on the H200 (75% of copy bandwidth), where
the published primal kernel takes 118.7 us. This is gluon_decode.py's design applied to the primal
step: persistent one-warp programs loop over (sequence, head) items and copy the next item's W1,
W1_grad and vectors into shared memory with cp.async (two buffer sets, 2 x 16.5 KB) while the current
item is computed from the other set. 115 us at B = 512 on the H200 (88% of copy bandwidth), 92% at
B = 2048 (exp/results/h200/kernel_sweep_round8_h200_d24efa7.jsonl).

The arithmetic is triton_primal.py's, regrouped so that W1 and W1_grad are read from shared memory
in one pass before the gradient is known and once more to write the new gradient:
    z1k = k W1 + b1,  g = eta dLoss/dZ(z1k)                         (LayerNorm backward)
    q W_bar = q (W1 - c W1_grad) - c (q . k) g                      W_bar = W1 - c (W1_grad + k^T g)
    out = q + LN(q W_bar + b1 - c (b1_grad + g))
then W1_grad + k^T g rounded into W1_grad (or, at the last position, W_bar into W1 and zeros into the
gradients). Float32 throughout; the regrouping changes only the float32 rounding of z.
Gluon does not run under the Triton interpreter: the CPU tests compile it for sm_90
(compile_offline), the GPU tests (pytest -m gpu) run it.
"""

from __future__ import annotations

from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.ampere import async_copy as cp

from ttt_decode.ops import ttt_triton_common as tc
from ttt_decode.ops.ttt_common import TTT_NORM_EPS
from ttt_decode.ops.ttt_linear.gluon_decode import HEAD_DIM, _barrier, compile_for_target, copyable, num_sms


@gluon.jit
def _issue(buf, w_s, gw_s, t_s, b_s, n_s, q_ptr, k_ptr, v_ptr, gamma_ptr, beta_ptr, w1_ptr, b1_ptr, gw1_ptr,
           gb1_ptr, item, H, stride_qb, stride_qh, stride_kb, stride_kh, stride_vb, stride_vh, w_off, o_v,
           D: gl.constexpr):
    """cp.async of everything item reads into buffer set buf: W1, W1_grad [D, D], the token's q, k, v,
    b1, b1_grad and the head's LayerNorm gamma, beta [D]."""
    i_b = item // H
    i_h = item % H
    cp.async_copy_global_to_shared(w_s.index(buf), w1_ptr + item * (D * D) + w_off)
    cp.async_copy_global_to_shared(gw_s.index(buf), gw1_ptr + item * (D * D) + w_off)
    cp.async_copy_global_to_shared(t_s.index(4 * buf), q_ptr + i_b * stride_qb + i_h * stride_qh + o_v)
    cp.async_copy_global_to_shared(t_s.index(4 * buf + 1), k_ptr + i_b * stride_kb + i_h * stride_kh + o_v)
    cp.async_copy_global_to_shared(t_s.index(4 * buf + 2), v_ptr + i_b * stride_vb + i_h * stride_vh + o_v)
    cp.async_copy_global_to_shared(b_s.index(2 * buf), b1_ptr + item * D + o_v)
    cp.async_copy_global_to_shared(b_s.index(2 * buf + 1), gb1_ptr + item * D + o_v)
    cp.async_copy_global_to_shared(n_s.index(2 * buf), gamma_ptr + i_h * D + o_v)
    cp.async_copy_global_to_shared(n_s.index(2 * buf + 1), beta_ptr + i_h * D + o_v)


@gluon.jit
def _m1_primal_gluon_kernel(
    q_ptr, k_ptr, v_ptr, eta_ptr, c_ptr, gamma_ptr, beta_ptr, pos_ptr, w1_ptr, b1_ptr, gw1_ptr, gb1_ptr, out_ptr,
    n_items, H, stride_qb, stride_qh, stride_kb, stride_kh, stride_vb, stride_vh, stride_eb, stride_eh,
    D: gl.constexpr, MB: gl.constexpr, EPS: gl.constexpr, ROWS: gl.constexpr,
):
    # [R, D] tiles on one warp: 8 consecutive columns (16 bytes of fp16) a lane, 8 lanes across a row.
    L: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [1, 1], [1, 0])
    ROW: gl.constexpr = gl.SliceLayout(1, L)
    COL: gl.constexpr = gl.SliceLayout(0, L)
    V1: gl.constexpr = gl.BlockedLayout([2], [32], [1], [0])  # a [D] vector's copy: 2 elements a lane
    SH: gl.constexpr = gl.SwizzledSharedLayout(8, 1, 8, [1, 0])
    SH1: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, [0])
    OUT_DT: gl.constexpr = out_ptr.dtype.element_ty

    w_s = gl.allocate_shared_memory(gl.float16, [2, D, D], SH)
    gw_s = gl.allocate_shared_memory(gl.float16, [2, D, D], SH)
    t_s = gl.allocate_shared_memory(q_ptr.dtype.element_ty, [8, D], SH1)  # q, k, v of set s at rows 4 s + 0..2
    b_s = gl.allocate_shared_memory(gl.float16, [4, D], SH1)  # b1, b1_grad at rows 2 s, 2 s + 1
    n_s = gl.allocate_shared_memory(gamma_ptr.dtype.element_ty, [4, D], SH1)  # gamma, beta at rows 2 s, 2 s + 1

    o_w = gl.arange(0, D, layout=ROW)
    o_c = gl.arange(0, D, layout=COL)
    o_r = gl.arange(0, ROWS, layout=ROW)
    o_v = gl.arange(0, D, layout=V1)
    pos = gl.load(pos_ptr).to(gl.int32)
    c_i = gl.load(c_ptr + pos).to(gl.float32)
    w_off = o_w[:, None] * D + o_c[None, :]
    m_d = o_c < D

    pid = gl.program_id(0)
    nprog = gl.num_programs(0)
    _issue(0, w_s, gw_s, t_s, b_s, n_s, q_ptr, k_ptr, v_ptr, gamma_ptr, beta_ptr, w1_ptr, b1_ptr, gw1_ptr, gb1_ptr,
           pid, H, stride_qb, stride_qh, stride_kb, stride_kh, stride_vb, stride_vh, w_off, o_v, D)
    cp.commit_group()
    eta_next = gl.load(eta_ptr + (pid // H) * stride_eb + (pid % H) * stride_eh).to(gl.float32)
    for it in range(pid, n_items, nprog):
        buf = ((it - pid) // nprog) % 2
        nxt = it + nprog
        _barrier()  # the other set was read in the previous iteration
        if nxt < n_items:
            _issue(1 - buf, w_s, gw_s, t_s, b_s, n_s, q_ptr, k_ptr, v_ptr, gamma_ptr, beta_ptr, w1_ptr, b1_ptr,
                   gw1_ptr, gb1_ptr, nxt, H, stride_qb, stride_qh, stride_kb, stride_kh, stride_vb, stride_vh,
                   w_off, o_v, D)
        cp.commit_group()
        eta = eta_next
        nxt_c = gl.minimum(nxt, n_items - 1)
        eta_next = gl.load(eta_ptr + (nxt_c // H) * stride_eb + (nxt_c % H) * stride_eh).to(gl.float32)

        cp.wait_group(1)
        _barrier()
        q_sm = t_s.index(4 * buf)
        k_sm = t_s.index(4 * buf + 1)
        q = q_sm.load(COL).to(gl.float32)
        k = k_sm.load(COL).to(gl.float32)
        v = t_s.index(4 * buf + 2).load(COL).to(gl.float32)
        b1 = b_s.index(2 * buf).load(COL).to(gl.float32)
        gb1 = b_s.index(2 * buf + 1).load(COL).to(gl.float32)
        gam = n_s.index(2 * buf).load(COL).to(gl.float32)
        bet = n_s.index(2 * buf + 1).load(COL).to(gl.float32)
        w_cur = w_s.index(buf)
        gw_cur = gw_s.index(buf)

        # One pass over W1 and W1_grad: k W1 and q (W1 - c W1_grad).
        acc_k = gl.zeros([ROWS, D], gl.float32, L)
        acc_q = gl.zeros([ROWS, D], gl.float32, L)
        for r0 in gl.static_range(0, D, ROWS):
            w = w_cur.slice(r0, ROWS, dim=0).load(L).to(gl.float32)
            gw = gw_cur.slice(r0, ROWS, dim=0).load(L).to(gl.float32)
            kr = k_sm.slice(r0, ROWS).load(ROW).to(gl.float32)
            qr = q_sm.slice(r0, ROWS).load(ROW).to(gl.float32)
            acc_k += w * kr[:, None]
            acc_q += (w - c_i * gw) * qr[:, None]
        z1k = gl.sum(acc_k, 0) + b1
        g = tc.ln_fused_l2_bwd(z1k, v - k, gam, bet, m_d, D, EPS) * eta  # [D]
        gb_new = gb1 + g
        bias_bar = b1 - c_i * gb_new
        z = gl.sum(acc_q, 0) - (c_i * gl.sum(q * k, 0)) * g + bias_bar
        out = q + tc.ln_fwd(z, gam, bet, m_d, D, EPS)
        gl.store(out_ptr + it * D + o_c, out.to(OUT_DT))

        # The second pass: W1_grad + k^T g into W1_grad, or at the end of the mini-batch W_bar into W1 and
        # the gradients restarted at zero.
        p_w1 = w1_ptr + it * (D * D)
        p_gw1 = gw1_ptr + it * (D * D)
        # A barrier here makes the second pass read the tiles from shared memory again: without it the
        # compiler keeps the first pass's loads live through the LayerNorm and spills them (255
        # registers and 344 bytes of stack, offline for sm_90).
        _barrier()
        if pos == MB - 1:
            for r0 in gl.static_range(0, D, ROWS):
                w = w_cur.slice(r0, ROWS, dim=0).load(L).to(gl.float32)
                gw = gw_cur.slice(r0, ROWS, dim=0).load(L).to(gl.float32)
                kr = k_sm.slice(r0, ROWS).load(ROW).to(gl.float32)
                off = (r0 + o_r)[:, None] * D + o_c[None, :]
                gl.store(p_w1 + off, (w - c_i * (gw + kr[:, None] * g[None, :])).to(gl.float16))
                gl.store(p_gw1 + off, gl.zeros([ROWS, D], gl.float16, L))
            gl.store(b1_ptr + it * D + o_c, bias_bar.to(gl.float16))
            gl.store(gb1_ptr + it * D + o_c, gl.zeros([D], gl.float16, COL))
        else:
            for r0 in gl.static_range(0, D, ROWS):
                gw = gw_cur.slice(r0, ROWS, dim=0).load(L).to(gl.float32)
                kr = k_sm.slice(r0, ROWS).load(ROW).to(gl.float32)
                off = (r0 + o_r)[:, None] * D + o_c[None, :]
                gl.store(p_gw1 + off, (gw + kr[:, None] * g[None, :]).to(gl.float16))
            gl.store(gb1_ptr + it * D + o_c, gb_new.to(gl.float16))
    cp.wait_group(0)


def supported(q, k, v, gamma, beta, W1, b1, gW1, gb1) -> bool:
    """Whether this kernel takes these inputs (else the caller runs the Triton kernel): those of
    gluon_decode.copyable(), with W1, b1 and the gradients as the state."""
    return copyable(q, k, v, gamma, beta, W1, b1, gW1, gb1)


def launch(q, k, v, eta, c, gamma, beta, pos, W1, b1, gW1, gb1, out, programs_per_sm: int = 4, rows: int = 16):
    """Run the kernel into out [B, H, 64] (contiguous) for inputs that supported() takes: programs_per_sm
    persistent programs a multiprocessor (at most the number of items; at most 6 fit the 2 x 16.5 KB of
    buffers a program takes on sm_90, and 4 measured best, triton_primal.primal_config), W1 and W1_grad
    read in rows-row slices."""
    B, H, f = q.shape
    n = B * H
    grid = (min(n, programs_per_sm * num_sms(q.device)),)
    _m1_primal_gluon_kernel[grid](
        q, k, v, eta, c, gamma, beta, pos, W1, b1, gW1, gb1, out,
        n, H, q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), eta.stride(0),
        eta.stride(1), D=f, MB=c.shape[0], EPS=TTT_NORM_EPS, ROWS=rows, num_warps=1)
    return out


def compile_offline(capability: int = 90, rows: int = 16, mini_batch: int = 16):
    """This kernel compiled for an NVIDIA target without a GPU (gluon_decode.compile_for_target)."""
    return compile_for_target(_m1_primal_gluon_kernel, "q k v eta c gamma beta pos w1 b1 gw1 gb1 out".split(),
                              {"D": HEAD_DIM, "MB": mini_batch, "EPS": TTT_NORM_EPS, "ROWS": rows}, capability)
