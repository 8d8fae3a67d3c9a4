"""Gluon dual-form decode step of TTT-Linear (M1) for fp16 state at f = 64, b = 16; the reference is
naive.decode_step_dual, the same function as triton_decode.py's kernel.

Why a second kernel: the Triton kernel holds an item's W1 [64, 64] in registers (251 a lane at one
warp with the update), so 8 programs a multiprocessor are resident and each waits for its own tile
before its serial chain runs: 65 us at B = 512, 68% of the copy bandwidth (exp/NOTES.md, "H200 kernel
sweeps"). Here persistent programs (one warp each) loop over (sequence, head) items and copy the next
item's W1 and cache rows into shared memory with cp.async (two buffers) while the current item is
computed from the other buffer: every program always has one item's bytes in flight, and W1 is read
from shared memory in 16-row slices, so it takes few registers. The end-of-mini-batch update reads W1,
K and G from shared memory and runs on the tensor cores (fp16 rows: exact products, float32
accumulation).

FUSED_QK (the model's fused step, ops `ttt_linear_dual_step_qk`): the kernel also does qk_prep's work
(ops/ttt_block_triton.py: the q and k convs over the ring, rotary, eta, c), one item ahead. At the top
of an iteration the next item's q0, its ring slots and lr are loaded into registers (a few words a
lane), and at the end of it the next item's q, k are computed into its buffer set's rows where the
plain kernel's cp.async puts them; the loads' latency hides behind the current item, and the grid is a
multiple of H, so that a program's conv taps, rotary row and LayerNorm weights are its one head's,
loaded once. Offline for sm_90 the loop is 7 instructions longer than the plain kernel's, and the layer
saves qk_prep's launch and the q, k round trip through memory.

Gluon (triton.experimental.gluon) gives the explicit shared memory and async copies Triton's
pipeliner does not apply to these loads; it does not run under the Triton interpreter, so the CPU
tests cover triton_decode.py and the GPU tests (pytest -m gpu) this kernel. The arithmetic is
triton_decode.py's, in the same order where it matters for rounding (cache rows rounded to fp16
before use, as the reference reads them back).
"""

from __future__ import annotations

import functools

import torch
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.ampere import async_copy as cp
from triton.experimental.gluon.language.nvidia.ampere import mma_v2

from ttt_decode.ops import ttt_triton_common as tc
from ttt_decode.ops.ttt_common import TTT_NORM_EPS

HEAD_DIM, MINI_BATCH = 64, 16
# A barrier across the program's threads: Triton 3.6 names it thread_barrier, 3.8 barrier.
_barrier = gl.thread_barrier if hasattr(gl, "thread_barrier") else gl.barrier


@gluon.jit
def _issue(buf, w_s, k_s, g_s, t_s, b_s, n_s, q_ptr, k_ptr, v_ptr, gamma_ptr, beta_ptr, w1_ptr, b1_ptr, ck_ptr,
           cg_ptr, item, H, stride_qb, stride_qh, stride_kb, stride_kh, stride_vb, stride_vh, w_off, c_off, m_old,
           o_v, D: gl.constexpr, MB: gl.constexpr, FUSED_QK: gl.constexpr):
    """cp.async of everything item reads into buffer set buf: W1 [D, D], its cache rows s < pos [MB, D],
    the token's q, k, v, b1 and the head's LayerNorm gamma, beta [D]. FUSED_QK: v and b1 of the token's
    vectors only (the prologue stores q, k; gamma, beta are the program's head's, held in registers)."""
    i_b = item // H
    i_h = item % H
    cp.async_copy_global_to_shared(w_s.index(buf), w1_ptr + item * (D * D) + w_off)
    cp.async_copy_global_to_shared(k_s.index(buf), ck_ptr + item * (MB * D) + c_off, mask=m_old)
    cp.async_copy_global_to_shared(g_s.index(buf), cg_ptr + item * (MB * D) + c_off, mask=m_old)
    if not FUSED_QK:
        cp.async_copy_global_to_shared(t_s.index(4 * buf), q_ptr + i_b * stride_qb + i_h * stride_qh + o_v)
        cp.async_copy_global_to_shared(t_s.index(4 * buf + 1), k_ptr + i_b * stride_kb + i_h * stride_kh + o_v)
    cp.async_copy_global_to_shared(t_s.index(4 * buf + 2), v_ptr + i_b * stride_vb + i_h * stride_vh + o_v)
    cp.async_copy_global_to_shared(b_s.index(buf), b1_ptr + item * D + o_v)
    if not FUSED_QK:
        cp.async_copy_global_to_shared(n_s.index(2 * buf), gamma_ptr + i_h * D + o_v)
        cp.async_copy_global_to_shared(n_s.index(2 * buf + 1), beta_ptr + i_h * D + o_v)


@gluon.jit
def _conv_rotary(x, s0, s1, s2, t0, t1, t2, t_new, bias, cos, sin, even, ACT: gl.constexpr,
                 HAS_BIAS: gl.constexpr, WIDTH: gl.constexpr):
    """One of qk_prep's convs at one item, then rotary, in qk_prep's order and roundings (ops/
    ttt_block_triton.py: bias, then the old slots s_j times their taps t_j in slot order, then the new
    input x times its tap; the sum rounded to ACT; the rotated pair rounded to ACT). [D / 2, 2] tiles, a
    rotary pair a lane, all float32; slots and taps past WIDTH - 2 are not read."""
    acc = gl.zeros_like(x)
    if HAS_BIAS:
        acc += bias
    acc += s0 * t0
    if WIDTH >= 3:
        acc += s1 * t1
    if WIDTH >= 4:
        acc += s2 * t2
    y = (acc + x * t_new).to(ACT).to(gl.float32)
    y_e = gl.sum(gl.where(even, y, 0.0), 1)  # [D / 2]: the pairs' halves (in-lane sums of one term)
    y_o = gl.sum(gl.where(even, 0.0, y), 1)
    return gl.where(even, (y_e * cos - y_o * sin)[:, None], (y_o * cos + y_e * sin)[:, None]).to(ACT)


@gluon.jit
def _load_qk_inputs(p_ptr, ring_ptr, item, H, stride_p, lr_col, i_h, cols2, cpos, dim, WIDTH: gl.constexpr):
    """An item's prologue inputs into registers: q0 (its projection columns), the ring's old slots
    (cpos + 1 + j) % WIDTH for j < WIDTH - 1 (zeros past them) and its lr column; the ring row's base."""
    i_b = item // H
    row_p = p_ptr + i_b * stride_p
    base = i_b * (WIDTH * dim)
    x = gl.load(row_p + cols2)
    s0 = gl.load(ring_ptr + base + ((cpos + 1) % WIDTH) * dim + cols2)
    s1 = s0
    s2 = s0
    if WIDTH >= 3:
        s1 = gl.load(ring_ptr + base + ((cpos + 2) % WIDTH) * dim + cols2)
    if WIDTH >= 4:
        s2 = gl.load(ring_ptr + base + ((cpos + 3) % WIDTH) * dim + cols2)
    lr = gl.load(row_p + lr_col + i_h)
    return x, s0, s1, s2, lr, base


@gluon.jit
def _finish_after_loop(pid, nprog, n_items, H, D: gl.constexpr, out_ptr, y_ptr, nw_ptr, nb_ptr, cnt_ptr, p_ptr,
                       stride_p, g_col, gn_eps, BLOCK_ROW: gl.constexpr, HAS_GATE: gl.constexpr):
    """GATE_NORM: every item of this program counted after its loop, 32 at a time (one lane each, one release
    for all of them: the release before an atomic is a fence that, paid per item, drained the cp.async pipeline,
    187 against 79 us at B = 512 on an H100), then gate_norm_row over each row whose last head it counted."""
    A1: gl.constexpr = gl.BlockedLayout([1], [32], [1], [0])
    lane = gl.arange(0, 32, layout=A1)
    ones = gl.full([32], 1, gl.int32, A1)
    n_mine = (n_items - pid + nprog - 1) // nprog
    _barrier()  # every lane's output stores before the release
    for j0 in range(0, n_mine, 32):
        rows = (pid + (j0 + lane) * nprog) // H
        valid = (j0 + lane) < n_mine
        counted = gl.atomic_add(cnt_ptr + rows, ones, mask=valid, sem="acq_rel", scope="gpu")
        mine = gl.where(valid & (counted == H - 1), rows, -1)
        for j in range(0, 32):
            row = gl.max(gl.where(lane == j, mine, -1), 0)
            if row >= 0:
                gl.store(cnt_ptr + row + gl.zeros_like(lane), gl.zeros_like(lane), mask=lane == 0)
                _barrier()  # the acquire before every lane's reads
                dim = H * D
                o_row = gl.arange(0, BLOCK_ROW, layout=gl.BlockedLayout([8], [32], [1], [0]))
                tc.gate_norm_row(out_ptr + row * dim, p_ptr + row * stride_p + g_col, nw_ptr, nb_ptr, y_ptr + row * dim,
                                 o_row, dim, gn_eps, HAS_GATE)


@gluon.jit
def _m1_dual_gluon_kernel(
    q_ptr, k_ptr, v_ptr, eta_ptr, c_ptr, gamma_ptr, beta_ptr, pos_ptr, w1_ptr, b1_ptr, ck_ptr, cg_ptr, out_ptr,
    n_items, H, stride_qb, stride_qh, stride_kb, stride_kh, stride_vb, stride_vh, stride_eb, stride_eh,
    # FUSED_QK: q, k, eta, c from qk_prep's inputs (tc.qk_kernel_args; q_ptr, k_ptr, eta_ptr, c_ptr unused)
    p_ptr, ring_ptr, cpos_ptr, wq_ptr, bq_ptr, wk_ptr, bk_ptr, cos_ptr, sin_ptr, rpos_ptr, lrb_ptr, tok_ptr,
    stride_p, lr_col, eta_scale, dim,
    # GATE_NORM (with FUSED_QK): ops.ttt_block.gate_norm of each finished row into y (tc.gn_kernel_args)
    y_ptr, nw_ptr, nb_ptr, cnt_ptr, g_col, gn_eps,
    D: gl.constexpr, MB: gl.constexpr, EPS: gl.constexpr, ROWS: gl.constexpr,
    FUSED_QK: gl.constexpr, HAS_QK_BIAS: gl.constexpr, WIDTH: gl.constexpr,
    GATE_NORM: gl.constexpr, HAS_GATE: gl.constexpr, BLOCK_ROW: gl.constexpr,
):
    # [R, D] tiles on one warp: 8 consecutive columns (16 bytes of fp16) a lane, 8 lanes across a row.
    L: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [1, 1], [1, 0])
    ROW: gl.constexpr = gl.SliceLayout(1, L)  # vectors along a tile's rows
    COL: gl.constexpr = gl.SliceLayout(0, L)  # vectors along its columns
    V1: gl.constexpr = gl.BlockedLayout([2], [32], [1], [0])  # a [D] vector's copy: 2 elements (4+ bytes) a lane
    P2: gl.constexpr = gl.BlockedLayout([1, 2], [32, 1], [1, 1], [1, 0])  # [D / 2, 2]: a rotary pair a lane
    SH: gl.constexpr = gl.SwizzledSharedLayout(8, 1, 8, [1, 0])
    SH1: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, [0])  # [n, D] vector buffers, indexed by n
    MMA: gl.constexpr = gl.NVMMADistributedLayout([2, 0], [1, 1], [16, 8])
    A_OP: gl.constexpr = gl.DotOperandLayout(0, MMA, 2)
    B_OP: gl.constexpr = gl.DotOperandLayout(1, MMA, 2)
    OUT_DT: gl.constexpr = out_ptr.dtype.element_ty
    ACT: gl.constexpr = v_ptr.dtype.element_ty

    # Two buffer sets: the item being computed and the next one in flight.
    w_s = gl.allocate_shared_memory(gl.float16, [2, D, D], SH)
    k_s = gl.allocate_shared_memory(gl.float16, [2, MB, D], SH)
    g_s = gl.allocate_shared_memory(gl.float16, [2, MB, D], SH)
    t_s = gl.allocate_shared_memory(ACT, [8, D], SH1)  # q, k, v of set s at rows 4 s + 0..2
    b_s = gl.allocate_shared_memory(gl.float16, [2, D], SH1)
    n_s = gl.allocate_shared_memory(gamma_ptr.dtype.element_ty, [4, D], SH1)  # gamma, beta at rows 2 s, 2 s + 1

    o_w = gl.arange(0, D, layout=ROW)
    o_c = gl.arange(0, D, layout=COL)
    o_s = gl.arange(0, MB, layout=ROW)
    o_v = gl.arange(0, D, layout=V1)
    pos = gl.load(pos_ptr).to(gl.int32)
    w_off = o_w[:, None] * D + o_c[None, :]
    c_off = o_s[:, None] * D + o_c[None, :]
    m_old = (o_s < pos)[:, None] & (o_c < D)[None, :]
    m_cur = (o_s == pos)[:, None] & (o_c < D)[None, :]
    m_rows = o_s <= pos

    pid = gl.program_id(0)
    nprog = gl.num_programs(0)
    # The first item's copies before anything else, so that they are in flight while the rest is set up.
    _issue(0, w_s, k_s, g_s, t_s, b_s, n_s, q_ptr, k_ptr, v_ptr, gamma_ptr, beta_ptr, w1_ptr, b1_ptr, ck_ptr, cg_ptr,
           pid, H, stride_qb, stride_qh, stride_kb, stride_kh, stride_vb, stride_vh, w_off, c_off, m_old, o_v, D, MB,
           FUSED_QK)
    cp.commit_group()
    if FUSED_QK:
        # qk_prep's work, one item ahead: the next item's q0, ring slots and lr are loaded into registers
        # at the top of an iteration and its q, k computed into its buffer set at the end, so the loads'
        # latency hides behind the current item. The launch makes the grid a multiple of H: a program's
        # items are all of one head, whose conv taps, rotary factors, lr bias and LayerNorm weights are
        # loaded once here.
        i_h = pid % H
        c_i = tc.token_coeff(tok_ptr, pos)
        cpos = gl.load(cpos_ptr).to(gl.int32)
        o_h = gl.arange(0, D // 2, layout=gl.SliceLayout(1, P2))
        o_2 = gl.arange(0, 2, layout=gl.SliceLayout(0, P2))
        even = (o_2 == 0)[None, :]
        cols2 = i_h * D + o_h[:, None] * 2 + o_2[None, :]  # [D / 2, 2]: the head's columns as rotary pairs
        rot = gl.load(rpos_ptr).to(gl.int32) * (D // 2)
        cos = gl.load(cos_ptr + rot + o_h).to(ACT).to(gl.float32)
        sin = gl.load(sin_ptr + rot + o_h).to(ACT).to(gl.float32)
        tq0 = gl.load(wq_ptr + cols2).to(gl.float32)
        tk0 = gl.load(wk_ptr + cols2).to(gl.float32)
        tq1 = tq0
        tk1 = tk0
        tq2 = tq0
        tk2 = tk0
        if WIDTH >= 3:
            tq1 = gl.load(wq_ptr + dim + cols2).to(gl.float32)
            tk1 = gl.load(wk_ptr + dim + cols2).to(gl.float32)
        if WIDTH >= 4:
            tq2 = gl.load(wq_ptr + 2 * dim + cols2).to(gl.float32)
            tk2 = gl.load(wk_ptr + 2 * dim + cols2).to(gl.float32)
        tq_new = gl.load(wq_ptr + (WIDTH - 1) * dim + cols2).to(gl.float32)
        tk_new = gl.load(wk_ptr + (WIDTH - 1) * dim + cols2).to(gl.float32)
        bq = tq0
        bk = tk0
        if HAS_QK_BIAS:
            bq = gl.load(bq_ptr + cols2).to(gl.float32)
            bk = gl.load(bk_ptr + cols2).to(gl.float32)
        lrb = gl.load(lrb_ptr + i_h).to(gl.float32)
        gam = gl.load(gamma_ptr + i_h * D + o_c).to(gl.float32)
        bet = gl.load(beta_ptr + i_h * D + o_c).to(gl.float32)
        # The first item's q, k (into set 0) and eta.
        x, s0, s1, s2, lr, base = _load_qk_inputs(p_ptr, ring_ptr, pid, H, stride_p, lr_col, i_h, cols2, cpos, dim,
                                                  WIDTH)
        xf = x.to(gl.float32)
        t_s.index(0).reshape([D // 2, 2]).store(
            _conv_rotary(xf, s0.to(gl.float32), s1.to(gl.float32), s2.to(gl.float32), tq0, tq1, tq2, tq_new, bq,
                         cos, sin, even, ACT, HAS_QK_BIAS, WIDTH))
        t_s.index(1).reshape([D // 2, 2]).store(
            _conv_rotary(xf, s0.to(gl.float32), s1.to(gl.float32), s2.to(gl.float32), tk0, tk1, tk2, tk_new, bk,
                         cos, sin, even, ACT, HAS_QK_BIAS, WIDTH))
        gl.store(ring_ptr + base + cpos * dim + cols2, x.to(ring_ptr.dtype.element_ty))
        eta_next = eta_scale / (1.0 + gl.exp(-(lr.to(gl.float32) + lrb)))
    else:
        c_i = gl.load(c_ptr + pos).to(gl.float32)
        eta_next = gl.load(eta_ptr + (pid // H) * stride_eb + (pid % H) * stride_eh).to(gl.float32)
    for it in range(pid, n_items, nprog):
        buf = ((it - pid) // nprog) % 2
        nxt = it + nprog
        # The other buffer set was read in the previous iteration (every lane is past those reads here).
        _barrier()
        if nxt < n_items:
            _issue(1 - buf, w_s, k_s, g_s, t_s, b_s, n_s, q_ptr, k_ptr, v_ptr, gamma_ptr, beta_ptr, w1_ptr, b1_ptr,
                   ck_ptr, cg_ptr, nxt, H, stride_qb, stride_qh, stride_kb, stride_kh, stride_vb, stride_vh, w_off,
                   c_off, m_old, o_v, D, MB, FUSED_QK)
        cp.commit_group()
        eta = eta_next
        nxt_c = gl.minimum(nxt, n_items - 1)
        if FUSED_QK:
            x, s0, s1, s2, lr, base = _load_qk_inputs(p_ptr, ring_ptr, nxt_c, H, stride_p, lr_col, i_h, cols2, cpos,
                                                      dim, WIDTH)
        else:
            eta_next = gl.load(eta_ptr + (nxt_c // H) * stride_eb + (nxt_c % H) * stride_eh).to(gl.float32)

        cp.wait_group(1)  # this item's copies (the next item's stay in flight)
        _barrier()  # ... and the other lanes' parts of them
        q_sm = t_s.index(4 * buf)
        k_sm = t_s.index(4 * buf + 1)
        q = q_sm.load(COL).to(gl.float32)
        k = k_sm.load(COL).to(gl.float32)
        v = t_s.index(4 * buf + 2).load(COL).to(gl.float32)
        b1 = b_s.index(buf).load(COL).to(gl.float32)
        if not FUSED_QK:
            gam = n_s.index(2 * buf).load(COL).to(gl.float32)
            bet = n_s.index(2 * buf + 1).load(COL).to(gl.float32)
        w_cur = w_s.index(buf)
        acc_k = gl.zeros([ROWS, D], gl.float32, L)
        acc_q = gl.zeros([ROWS, D], gl.float32, L)
        for r0 in gl.static_range(0, D, ROWS):
            w = w_cur.slice(r0, ROWS, dim=0).load(L).to(gl.float32)
            kr = k_sm.slice(r0, ROWS).load(ROW).to(gl.float32)
            qr = q_sm.slice(r0, ROWS).load(ROW).to(gl.float32)
            acc_k += w * kr[:, None]
            acc_q += w * qr[:, None]
        z1k = gl.sum(acc_k, 0) + b1
        z1q = gl.sum(acc_q, 0) + b1

        # The Triton kernel's LayerNorm helpers (a Gluon kernel calls triton.jit functions); D is exact here.
        m_d = o_c < D
        gt = (tc.ln_fused_l2_bwd(z1k, v - k, gam, bet, m_d, D, EPS) * eta).to(gl.float16)
        k_r = k.to(gl.float16)
        gl.store(ck_ptr + it * (MB * D) + pos * D + o_c, k_r)
        gl.store(cg_ptr + it * (MB * D) + pos * D + o_c, gt)
        kc = gl.where(m_old, k_s.index(buf).load(L).to(gl.float32), 0.0)
        gc = gl.where(m_old, g_s.index(buf).load(L).to(gl.float32), 0.0)
        kc = gl.where(m_cur, k_r.to(gl.float32)[None, :], kc)
        gc = gl.where(m_cur, gt.to(gl.float32)[None, :], gc)
        a1 = gl.where(m_rows, gl.sum(kc * q[None, :], 1) + 1.0, 0.0)
        z = z1q - c_i * gl.sum(a1[:, None] * gc, 0)
        out = q + tc.ln_fwd(z, gam, bet, m_d, D, EPS)
        gl.store(out_ptr + it * D + o_c, out.to(OUT_DT))

        if FUSED_QK:
            # The next item's q, k into its set's rows (read there after the next iteration's barriers), q0
            # into its ring slot (a slot no program reads in this step), its eta.
            xf = x.to(gl.float32)
            t_s.index(4 * (1 - buf)).reshape([D // 2, 2]).store(
                _conv_rotary(xf, s0.to(gl.float32), s1.to(gl.float32), s2.to(gl.float32), tq0, tq1, tq2, tq_new,
                             bq, cos, sin, even, ACT, HAS_QK_BIAS, WIDTH))
            t_s.index(4 * (1 - buf) + 1).reshape([D // 2, 2]).store(
                _conv_rotary(xf, s0.to(gl.float32), s1.to(gl.float32), s2.to(gl.float32), tk0, tk1, tk2, tk_new,
                             bk, cos, sin, even, ACT, HAS_QK_BIAS, WIDTH))
            gl.store(ring_ptr + base + cpos * dim + cols2, x.to(ring_ptr.dtype.element_ty),
                     mask=(cols2 >= 0) & (nxt < n_items))
            eta_next = eta_scale / (1.0 + gl.exp(-(lr.to(gl.float32) + lrb)))

        if pos == MB - 1:
            # W1 -= c K^T G and b1 -= c sum_s G_s from the mini-batch's 16 rows (this token's included),
            # through shared memory: K^T and G as MMA operands, W1 read where it already is.
            _barrier()
            k_s.index(buf).store(kc.to(gl.float16))
            g_s.index(buf).store(gc.to(gl.float16))
            _barrier()
            kt = k_s.index(buf).permute([1, 0])  # [D, MB]
            g_op = g_s.index(buf).load(B_OP)
            o_u = gl.arange(0, 16, layout=ROW)
            for r0 in gl.static_range(0, D, 16):
                upd = mma_v2(kt.slice(r0, 16, dim=0).load(A_OP), g_op, gl.zeros([16, D], gl.float32, MMA))
                # In the tile layout for the subtraction and 16-byte stores (the MMA layout stores 4 bytes).
                upd = gl.convert_layout(upd, L)
                w_old = w_cur.slice(r0, 16, dim=0).load(L).to(gl.float32)
                gl.store(w1_ptr + it * (D * D) + (r0 + o_u)[:, None] * D + o_c[None, :],
                         (w_old - upd * c_i).to(gl.float16))
            gl.store(b1_ptr + it * D + o_c, (b1 - gl.sum(gc, 0) * c_i).to(gl.float16))
    cp.wait_group(0)
    if GATE_NORM:
        _finish_after_loop(pid, nprog, n_items, H, D, out_ptr, y_ptr, nw_ptr, nb_ptr, cnt_ptr, p_ptr, stride_p, g_col,
                           gn_eps, BLOCK_ROW, HAS_GATE)


def offsets_fit(*tensors) -> bool:
    """Whether every element offset of these tensors fits the kernels' int32 arithmetic (item * D * D and
    the like are int32 there; the Triton kernels, which take over otherwise, index with int64)."""
    return all(t.numel() < 2 ** 31 for t in tensors)


def copyable(q, k, v, gamma, beta, *state) -> bool:
    """What both M1 Gluon kernels need of their inputs: a CUDA device with cp.async (sm_80 on), f = 64,
    q, k, v of one dtype and gamma, beta of one dtype, every row the kernel copies 16-byte aligned with
    contiguous columns and row strides that are multiples of 16 elements (cp.async copies 4-16 bytes a
    lane, and the compiler knows a row's alignment only from a stride Triton marks divisible by 16: a
    projection row of 7720 fp16 elements is 16-byte aligned but did not compile), the state tensors
    fp16, contiguous and small enough for int32 offsets (offsets_fit)."""
    if not (q.is_cuda and torch.cuda.get_device_capability(q.device) >= (8, 0)):
        return False
    if q.shape[-1] != HEAD_DIM or not (q.dtype == k.dtype == v.dtype and gamma.dtype == beta.dtype):
        return False
    if not all(t.dtype == torch.float16 for t in state) or not offsets_fit(*state):
        return False
    for t in (q, k, v):
        if t.stride(-1) != 1 or t.data_ptr() % 16 or any(st % 16 for st in t.stride()[:-1]):
            return False
    return all(t.is_contiguous() and t.data_ptr() % 16 == 0 for t in (gamma, beta, *state))


def supported(q, k, v, gamma, beta, W1, b1, ck, cg1) -> bool:
    """Whether this kernel takes these inputs (else the caller runs the Triton kernel): those of
    copyable(), with W1, b1 and the cache as the state, and mini-batch 16 (mma.sync's K)."""
    return ck.shape[2] == MINI_BATCH and copyable(q, k, v, gamma, beta, W1, b1, ck, cg1)


@functools.lru_cache(maxsize=None)
def num_sms(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


def qk_supported(qk: dict, v) -> bool:
    """Whether the kernel can do qk_prep's work itself for these inputs (qk: tc.qk_kernel_args' dict; v the
    projection's v columns, which supported() has taken): q0, the ring and the conv weights read per
    head as [f / 2, 2] pairs, the ring [B, W, D] contiguous with W in 2..4 (the prologue's slots are
    named, not looped over) and of v's dtype, p with contiguous rows."""
    ring, p = qk["ring"], qk["p"]
    return (2 <= ring.shape[1] <= 4 and ring.is_contiguous() and ring.dtype == v.dtype == p.dtype
            and p.stride(1) == 1 and qk["wq"].is_contiguous() and qk["wk"].is_contiguous())


def launch(q, k, v, eta, c, gamma, beta, pos, W1, b1, ck, cg1, out, programs_per_sm: int = 8, rows: int = 16,
           qk: dict | None = None, gn: dict | None = None):
    """Run the kernel into out [B, H, 64] (contiguous) for inputs that supported() takes: programs_per_sm
    persistent programs a multiprocessor (at most the number of items), W1 read from shared memory in
    rows-row slices. qk (where qk_supported): qk_prep's inputs, its work done in the kernel (q, k, eta,
    c are then unused); the grid is then a multiple of H (each program's items are of one head). gn (with
    qk): the post-norm and gate of each finished row into gn["y"] too (tc.gn_kernel_args), a program's items
    counted after its loop."""
    B, H, f = v.shape
    n = B * H
    grid = min(n, programs_per_sm * num_sms(v.device))
    if qk is not None:
        grid = max(H, grid // H * H)  # n is a multiple of H
        q = k = eta = c = v  # unused under FUSED_QK
    assert gn is None or qk is not None, "the post-norm is fused with the fused prologue only"
    qk_args, qk_consts = tc.qk_kernel_args(qk, v, f)
    gn_args, gn_consts = tc.gn_kernel_args(gn, v, H * f)
    _m1_dual_gluon_kernel[(grid,)](
        q, k, v, eta, c, gamma, beta, pos, W1, b1, ck, cg1, out,
        n, H, q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), eta.stride(0),
        eta.stride(1), *qk_args, *gn_args, D=f, MB=ck.shape[2], EPS=TTT_NORM_EPS, ROWS=rows, **qk_consts,
        **gn_consts, num_warps=1)
    return out


def compile_for_target(fn, ptrs: list[str], consts: dict, capability: int = 90, tail: dict | None = None):
    """Compile an M1 Gluon kernel for an NVIDIA target without a GPU (Triton's bundled ptxas): fp16
    pointers (eta float32, pos int64), int32 sizes and strides, then tail's arguments (name: Triton
    type), the launch's 16-byte divisibility of pointers, strides and int32 tail arguments assumed. For
    inspection (registers, SASS) and for the CPU test that catches a Gluon API change; needs
    TRITON_INTERPRET unset at import."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon._runtime import GluonASTSource

    sig = {f"{n}_ptr": ("*fp32" if n == "eta" else "*i64" if n == "pos" else "*fp16") for n in ptrs}
    ints = "n_items H stride_qb stride_qh stride_kb stride_kh stride_vb stride_vh stride_eb stride_eh".split()
    sig.update({n: "i32" for n in ints})
    sig.update(tail or {})
    sig.update({n: "constexpr" for n in consts})
    names = list(sig)
    aligned = [n for n in names if n.endswith("_ptr") or n in ints[1:8] or (tail or {}).get(n) == "i32"]
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in aligned}
    src = GluonASTSource(fn=fn, signature=sig, constexprs=consts, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", capability, 32), options={"num_warps": 1})


# qk_prep's arguments of the fused kernel as compile_offline declares them: ttt-1b's fp16 model (the rotary
# table float32, the two positions int64).
_QK_TAIL = {**{f"{n}_ptr": "*fp16" for n in "p ring".split()}, "cpos_ptr": "*i64",
            **{f"{n}_ptr": "*fp16" for n in "wq bq wk bk".split()}, "cos_ptr": "*fp32", "sin_ptr": "*fp32",
            "rpos_ptr": "*i64", "lrb_ptr": "*fp16", "tok_ptr": "*fp16",
            "stride_p": "i32", "lr_col": "i32", "eta_scale": "fp32", "dim": "i32",
            **{f"{n}_ptr": "*fp16" for n in "y nw nb".split()}, "cnt_ptr": "*i32", "g_col": "i32", "gn_eps": "fp32"}


def compile_offline(capability: int = 90, rows: int = 16, fused_qk: bool = False, gate_norm: bool = False):
    """This kernel compiled for an NVIDIA target without a GPU (compile_for_target); fused_qk: with
    qk_prep's work (conv width 4, with biases), as the model's fused step launches it; gate_norm (with
    fused_qk): with the post-norm and gate of ttt-1b's rows (32 heads, gated)."""
    consts = {"D": HEAD_DIM, "MB": MINI_BATCH, "EPS": TTT_NORM_EPS, "ROWS": rows,
              "FUSED_QK": fused_qk, "HAS_QK_BIAS": fused_qk, "WIDTH": 4 if fused_qk else 1,
              "GATE_NORM": gate_norm, "HAS_GATE": gate_norm, "BLOCK_ROW": 2048 if gate_norm else 16}
    return compile_for_target(_m1_dual_gluon_kernel, "q k v eta c gamma beta pos w1 b1 ck cg out".split(),
                              consts, capability, tail=_QK_TAIL)
