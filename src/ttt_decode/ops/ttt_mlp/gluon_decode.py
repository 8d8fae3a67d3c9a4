"""Gluon dual-form decode step of TTT-MLP (M2) for fp16 state at f = 64, F = 256, b = 16; the reference is
naive.decode_step_dual, the same function as triton_decode.py's kernel (whose docstring has the math).

Why: the Triton kernel walks an item's F in chunks with plain loads, so each chunk's W1 / W2 tiles are
requested only when the chunk is reached, and the program waits for them before computing: 617 us at
B = 512, 51% of the copy bandwidth, latency-bound (exp/NOTES.md, "H200 kernel sweeps"). Here persistent
one-warp programs loop over (sequence, head) items. Each item is a fixed stream of 16 units: pass A's 8
chunks (W1 columns [f, 32] and W2 rows [32, f]), then pass B's 8 chunks in reverse (W2 rows again, the
cache rows of g1 and x2 for those columns, and at the end of the mini-batch W1's columns too). The
stream's addresses do not depend on the data, so each unit's tiles are copied into shared memory by
cp.async while the previous unit is computed (two slots), across item boundaries too, with the item's
vectors and cache rows of k and g2 copied with its first unit. Pass B's W2 copy is meant to hit L2:
pass A copies W2 with evict_last, pass B walks the chunks most recent first, and the rest is
evict_first (as the Triton kernel does).

The end-of-mini-batch update (the same launch, pos = b - 1) is done chunk by chunk in pass B on
mma.sync: W2's rows of the chunk -= c X2^T G2, W1's columns -= c K^T G1, from the tiles already in
shared memory (fp16 cache rows: exact products, float32 accumulation).

Gluon does not run in the Triton interpreter: the CPU tests cover triton_decode.py and compile this
kernel for sm_90; the GPU tests run it. The arithmetic is triton_decode.py's, with the same roundings.
"""

from __future__ import annotations

import torch
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.ampere import async_copy as cp
from triton.experimental.gluon.language.nvidia.ampere import mma_v2

from ttt_decode.ops.ttt_common import TTT_NORM_EPS
from ttt_decode.ops.ttt_linear.gluon_decode import _barrier, _ln_fused_l2_bwd, _ln_fwd

HEAD_DIM, HIDDEN, MINI_BATCH, CHUNK = 64, 256, 16, 32

# gelu (tanh form) as triton_decode's ttt_triton_common: 0.5 x (1 + tanh(u)) = x sigmoid(2u).
_K0 = gl.constexpr(0.7978845608028654)
_K1 = gl.constexpr(2.302208198110385)


@gluon.jit
def _sigmoid_2u(x):
    e = gl.exp2((x + x * x * x * 0.044715) * (-_K1))
    return gl.fdiv(1.0, e + 1.0)


@gluon.jit
def _gelu(x):
    return x * _sigmoid_2u(x)


@gluon.jit
def _gelu_and_grad(x):
    s = _sigmoid_2u(x)
    return x * s, s + x * s * (1.0 - s) * (x * x * 0.134145 + 1.0) * (2.0 * _K0)


@gluon.jit
def _issue_unit(u: gl.constexpr, slot: gl.constexpr, it, iset, pos, w1r, w2r, c1r, c2r, kc_s, gc_s, v_s, b1_s, b2_s,
                q_ptr, k_ptr, v_ptr, gamma_ptr, beta_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr, ck_ptr, cg1_ptr, cx2_ptr,
                cg2_ptr, H, stride_qb, stride_qh, stride_kb, stride_kh, stride_vb, stride_vh,
                D: gl.constexpr, FH: gl.constexpr, MB: gl.constexpr, BF: gl.constexpr):
    """cp.async of unit u of item it into ring slot `slot` (and at u = 0 the item's own data into set iset)."""
    LA: gl.constexpr = gl.BlockedLayout([1, 8], [8, 4], [1, 1], [1, 0])  # [*, 32] tiles
    LB: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [1, 1], [1, 0])  # [*, 64] tiles
    V1: gl.constexpr = gl.BlockedLayout([2], [32], [1], [0])
    NCH: gl.constexpr = FH // BF
    last = pos == MB - 1
    c: gl.constexpr = u if u < NCH else 2 * NCH - 1 - u
    o_fa = gl.arange(0, D, layout=gl.SliceLayout(1, LA))  # W1 rows (f)
    o_ca = gl.arange(0, BF, layout=gl.SliceLayout(0, LA))  # a chunk's columns
    o_rb = gl.arange(0, BF, layout=gl.SliceLayout(1, LB))  # W2 rows of a chunk
    o_cb = gl.arange(0, D, layout=gl.SliceLayout(0, LB))  # W2 columns (f)
    p_w1 = w1_ptr + it * (D * FH) + o_fa[:, None] * FH + (c * BF + o_ca)[None, :]
    p_w2 = w2_ptr + it * (FH * D) + (c * BF + o_rb)[:, None] * D + o_cb[None, :]
    if u < NCH:
        cp.async_copy_global_to_shared(w1r.index(slot), p_w1, eviction_policy="evict_first")
        cp.async_copy_global_to_shared(w2r.index(slot), p_w2, eviction_policy="evict_last")
    else:
        cp.async_copy_global_to_shared(w2r.index(slot), p_w2, eviction_policy="evict_first")
        o_s = gl.arange(0, MB, layout=gl.SliceLayout(1, LA))
        m_old = (o_s < pos)[:, None] & (o_ca < BF)[None, :]
        off = it * (MB * FH) + o_s[:, None] * FH + (c * BF + o_ca)[None, :]
        cp.async_copy_global_to_shared(c1r.index(slot), cg1_ptr + off, mask=m_old, eviction_policy="evict_first")
        cp.async_copy_global_to_shared(c2r.index(slot), cx2_ptr + off, mask=m_old, eviction_policy="evict_first")
        if last:
            cp.async_copy_global_to_shared(w1r.index(slot), p_w1, eviction_policy="evict_first")
    if u == 0:
        i_b = it // H
        i_h = it % H
        o_v = gl.arange(0, D, layout=V1)
        cp.async_copy_global_to_shared(v_s.index(8 * iset), q_ptr + i_b * stride_qb + i_h * stride_qh + o_v)
        cp.async_copy_global_to_shared(v_s.index(8 * iset + 1), k_ptr + i_b * stride_kb + i_h * stride_kh + o_v)
        cp.async_copy_global_to_shared(v_s.index(8 * iset + 2), v_ptr + i_b * stride_vb + i_h * stride_vh + o_v)
        cp.async_copy_global_to_shared(v_s.index(8 * iset + 3), gamma_ptr + i_h * D + o_v)
        cp.async_copy_global_to_shared(v_s.index(8 * iset + 4), beta_ptr + i_h * D + o_v)
        cp.async_copy_global_to_shared(b2_s.index(iset), b2_ptr + it * D + o_v)
        o_sb = gl.arange(0, MB, layout=gl.SliceLayout(1, LB))
        m_oldb = (o_sb < pos)[:, None] & (o_cb < D)[None, :]
        offb = it * (MB * D) + o_sb[:, None] * D + o_cb[None, :]
        cp.async_copy_global_to_shared(kc_s.index(iset), ck_ptr + offb, mask=m_oldb)
        cp.async_copy_global_to_shared(gc_s.index(iset), cg2_ptr + offb, mask=m_oldb)
        o_f = gl.arange(0, FH, layout=gl.BlockedLayout([FH // 32], [32], [1], [0]))
        cp.async_copy_global_to_shared(b1_s.index(iset), b1_ptr + it * FH + o_f)


@gluon.jit
def _m2_dual_gluon_kernel(
    q_ptr, k_ptr, v_ptr, eta_ptr, c_ptr, gamma_ptr, beta_ptr, pos_ptr,
    w1_ptr, b1_ptr, w2_ptr, b2_ptr, ck_ptr, cg1_ptr, cx2_ptr, cg2_ptr, out_ptr,
    n_items, H, stride_qb, stride_qh, stride_kb, stride_kh, stride_vb, stride_vh, stride_eb, stride_eh,
    D: gl.constexpr, FH: gl.constexpr, MB: gl.constexpr, BF: gl.constexpr, EPS: gl.constexpr,
):
    LA: gl.constexpr = gl.BlockedLayout([1, 8], [8, 4], [1, 1], [1, 0])  # [*, 32] tiles: W1 chunks, cache chunks
    LB: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [1, 1], [1, 0])  # [*, 64] tiles: W2 chunks, k / g2 rows
    ROW_A: gl.constexpr = gl.SliceLayout(1, LA)
    COL_A: gl.constexpr = gl.SliceLayout(0, LA)
    ROW_B: gl.constexpr = gl.SliceLayout(1, LB)
    COL_B: gl.constexpr = gl.SliceLayout(0, LB)
    SH: gl.constexpr = gl.SwizzledSharedLayout(8, 1, 8, [1, 0])
    SH1: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, [0])
    MMA: gl.constexpr = gl.NVMMADistributedLayout([2, 0], [1, 1], [16, 8])
    A_OP: gl.constexpr = gl.DotOperandLayout(0, MMA, 2)
    B_OP: gl.constexpr = gl.DotOperandLayout(1, MMA, 2)
    NCH: gl.constexpr = FH // BF
    NU: gl.constexpr = 2 * NCH
    ACT: gl.constexpr = q_ptr.dtype.element_ty
    OUT_DT: gl.constexpr = out_ptr.dtype.element_ty

    # The unit ring (2 slots) and the item sets (2: the item computed and the next one).
    w1r = gl.allocate_shared_memory(gl.float16, [2, D, BF], SH)
    w2r = gl.allocate_shared_memory(gl.float16, [2, BF, D], SH)
    c1r = gl.allocate_shared_memory(gl.float16, [2, MB, BF], SH)
    c2r = gl.allocate_shared_memory(gl.float16, [2, MB, BF], SH)
    kc_s = gl.allocate_shared_memory(gl.float16, [2, MB, D], SH)
    gc_s = gl.allocate_shared_memory(gl.float16, [2, MB, D], SH)
    v_s = gl.allocate_shared_memory(ACT, [16, D], SH1)  # per set s, rows 8 s + (q, k, v, gamma, beta)
    b1_s = gl.allocate_shared_memory(gl.float16, [2, FH], SH1)
    b2_s = gl.allocate_shared_memory(gl.float16, [2, D], SH1)
    z1_s = gl.allocate_shared_memory(gl.float32, [2, FH], SH1)  # pass A's k W1 + b1 (row 0) and q W1 + b1 (row 1)

    pos = gl.load(pos_ptr).to(gl.int32)
    c_i = gl.load(c_ptr + pos).to(gl.float32)
    last = pos == MB - 1
    o_sa = gl.arange(0, MB, layout=ROW_A)
    o_sb = gl.arange(0, MB, layout=ROW_B)
    o_ca = gl.arange(0, BF, layout=COL_A)
    o_cb = gl.arange(0, D, layout=COL_B)
    o_fa = gl.arange(0, D, layout=ROW_A)
    o_rb = gl.arange(0, BF, layout=ROW_B)
    m_old_a = (o_sa < pos)[:, None] & (o_ca < BF)[None, :]
    m_cur_a = (o_sa == pos)[:, None] & (o_ca < BF)[None, :]
    m_old_b = (o_sb < pos)[:, None] & (o_cb < D)[None, :]
    m_cur_b = (o_sb == pos)[:, None] & (o_cb < D)[None, :]

    pid = gl.program_id(0)
    nprog = gl.num_programs(0)
    _issue_unit(0, 0, pid, 0, pos, w1r, w2r, c1r, c2r, kc_s, gc_s, v_s, b1_s, b2_s, q_ptr, k_ptr, v_ptr, gamma_ptr,
                beta_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr, ck_ptr, cg1_ptr, cx2_ptr, cg2_ptr, H, stride_qb, stride_qh,
                stride_kb, stride_kh, stride_vb, stride_vh, D, FH, MB, BF)
    cp.commit_group()
    for it in range(pid, n_items, nprog):
        iset = ((it - pid) // nprog) % 2
        nxt = it + nprog
        eta = gl.load(eta_ptr + (it // H) * stride_eb + (it % H) * stride_eh).to(gl.float32)
        z2k = gl.zeros([D], gl.float32, COL_B)
        z2q = gl.zeros([D], gl.float32, COL_B)
        dots = gl.zeros([MB], gl.float32, ROW_A)
        g2 = gl.zeros([D], gl.float32, COL_B)
        a1 = gl.zeros([MB], gl.float32, ROW_A)
        for u in gl.static_range(NU):
            # Issue unit u + 1 (of this item, or unit 0 of the next) into the slot read by unit u - 1.
            _barrier()
            if u + 1 < NU:
                _issue_unit(u + 1, 1 - u % 2, it, iset, pos, w1r, w2r, c1r, c2r, kc_s, gc_s, v_s, b1_s, b2_s,
                            q_ptr, k_ptr, v_ptr, gamma_ptr, beta_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr, ck_ptr,
                            cg1_ptr, cx2_ptr, cg2_ptr, H, stride_qb, stride_qh, stride_kb, stride_kh, stride_vb,
                            stride_vh, D, FH, MB, BF)
            else:
                if nxt < n_items:
                    _issue_unit(0, 1 - u % 2, nxt, 1 - iset, pos, w1r, w2r, c1r, c2r, kc_s, gc_s, v_s, b1_s,
                                b2_s, q_ptr, k_ptr, v_ptr, gamma_ptr, beta_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr,
                                ck_ptr, cg1_ptr, cx2_ptr, cg2_ptr, H, stride_qb, stride_qh, stride_kb, stride_kh,
                                stride_vb, stride_vh, D, FH, MB, BF)
            cp.commit_group()
            cp.wait_group(1)
            _barrier()
            if u < NCH:  # pass A, chunk u: Z1k, Z1q of its columns (kept in z1_s), Z2k += X2k W2
                w1 = w1r.index(u % 2).load(LA).to(gl.float32)  # [D, BF]
                k_a = v_s.index(8 * iset + 1).load(ROW_A).to(gl.float32)
                q_a = v_s.index(8 * iset).load(ROW_A).to(gl.float32)
                b1c = b1_s.index(iset).slice(u * BF, BF).load(COL_A).to(gl.float32)
                z1k = gl.sum(w1 * k_a[:, None], 0) + b1c
                z1q = gl.sum(w1 * q_a[:, None], 0) + b1c
                z1_s.index(0).slice(u * BF, BF).store(z1k)
                z1_s.index(1).slice(u * BF, BF).store(z1q)
                x2k = gl.convert_layout(_gelu(z1k), ROW_B)
                w2 = w2r.index(u % 2).load(LB).to(gl.float32)  # [BF, D]
                z2k += gl.sum(w2 * x2k[:, None], 0)
                if u == NCH - 1:
                    # g2 (its cache row), and the weights q . k_s + 1 of the rows s <= pos (this token's k).
                    k_b = v_s.index(8 * iset + 1).load(COL_B).to(gl.float32)
                    q_b = v_s.index(8 * iset).load(COL_B).to(gl.float32)
                    v_b = v_s.index(8 * iset + 2).load(COL_B).to(gl.float32)
                    gam = v_s.index(8 * iset + 3).load(COL_B).to(gl.float32)
                    bet = v_s.index(8 * iset + 4).load(COL_B).to(gl.float32)
                    b2 = b2_s.index(iset).load(COL_B).to(gl.float32)
                    g2 = _ln_fused_l2_bwd(z2k + b2, v_b - k_b, gam, bet, D, EPS)
                    g2t = (g2 * eta).to(gl.float16)
                    k_r = k_b.to(gl.float16)
                    gl.store(ck_ptr + it * (MB * D) + pos * D + o_cb, k_r)
                    gl.store(cg2_ptr + it * (MB * D) + pos * D + o_cb, g2t)
                    kc = gl.where(m_old_b, kc_s.index(iset).load(LB), 0.0)
                    kc = gl.where(m_cur_b, k_r[None, :], kc)
                    gc = gl.where(m_old_b, gc_s.index(iset).load(LB), 0.0)
                    gc = gl.where(m_cur_b, g2t[None, :], gc)
                    a1b = gl.where(o_sb <= pos, gl.sum(kc.to(gl.float32) * q_b[None, :], 1) + 1.0, 0.0)
                    a1 = gl.convert_layout(a1b, ROW_A)
                    # The rows with this token's, for the epilogue and the update's MMAs.
                    _barrier()
                    kc_s.index(iset).store(kc)
                    gc_s.index(iset).store(gc)
            else:  # pass B, chunk c = 2 NCH - 1 - u: g1 and x2 cache rows, Z1', X2', Z2q += X2' W2, X2' . X2_s
                w2 = w2r.index(u % 2).load(LB).to(gl.float32)  # [BF, D]
                z1k = z1_s.index(0).slice((2 * NCH - 1 - u) * BF, BF).load(COL_A)
                z1q = z1_s.index(1).slice((2 * NCH - 1 - u) * BF, BF).load(COL_A)
                x2k, dx2k = _gelu_and_grad(z1k)
                g2_b = gl.convert_layout(g2, COL_B)
                w2g2 = gl.convert_layout(gl.sum(w2 * g2_b[None, :], 1), COL_A)
                g1t = (w2g2 * dx2k * eta).to(gl.float16)
                x2r = x2k.to(gl.float16)
                off = it * (MB * FH) + pos * FH + (2 * NCH - 1 - u) * BF + o_ca
                gl.store(cg1_ptr + off, g1t)
                gl.store(cx2_ptr + off, x2r)
                g1c = gl.where(m_old_a, c1r.index(u % 2).load(LA), 0.0)
                g1c = gl.where(m_cur_a, g1t[None, :], g1c)
                x2c = gl.where(m_old_a, c2r.index(u % 2).load(LA), 0.0)
                x2c = gl.where(m_cur_a, x2r[None, :], x2c)
                x2q = _gelu(z1q - gl.sum(a1[:, None] * g1c.to(gl.float32), 0) * c_i)  # [BF]
                dots += gl.sum(x2c.to(gl.float32) * x2q[None, :], 1)
                z2q += gl.sum(w2 * gl.convert_layout(x2q, ROW_B)[:, None], 0)
                if last:
                    # This chunk's share of the update: W2[c rows] -= c X2^T G2, W1[:, c cols] -= c K^T G1,
                    # b1[c] -= c sum_s G1 (all rows of the mini-batch, this token's included).
                    _barrier()
                    c1r.index(u % 2).store(g1c)
                    c2r.index(u % 2).store(x2c)
                    _barrier()
                    u2 = mma_v2(c2r.index(u % 2).permute([1, 0]).load(A_OP), gc_s.index(iset).load(B_OP),
                                gl.zeros([BF, D], gl.float32, MMA))
                    w2n = w2 - gl.convert_layout(u2, LB) * c_i
                    r_w2 = (2 * NCH - 1 - u) * BF + o_rb
                    gl.store(w2_ptr + it * (FH * D) + r_w2[:, None] * D + o_cb[None, :], w2n.to(gl.float16))
                    u1 = mma_v2(kc_s.index(iset).permute([1, 0]).load(A_OP), c1r.index(u % 2).load(B_OP),
                                gl.zeros([D, BF], gl.float32, MMA))
                    w1n = w1r.index(u % 2).load(LA).to(gl.float32) - gl.convert_layout(u1, LA) * c_i
                    c_w1 = (2 * NCH - 1 - u) * BF + o_ca
                    gl.store(w1_ptr + it * (D * FH) + o_fa[:, None] * FH + c_w1[None, :], w1n.to(gl.float16))
                    b1c = b1_s.index(iset).slice((2 * NCH - 1 - u) * BF, BF).load(COL_A).to(gl.float32)
                    b1n = b1c - gl.sum(g1c.to(gl.float32), 0) * c_i
                    gl.store(b1_ptr + it * FH + (2 * NCH - 1 - u) * BF + o_ca, b1n.to(gl.float16))
                if u == NU - 1:  # the output, and at the end of the mini-batch b2
                    q_b = v_s.index(8 * iset).load(COL_B).to(gl.float32)
                    gam = v_s.index(8 * iset + 3).load(COL_B).to(gl.float32)
                    bet = v_s.index(8 * iset + 4).load(COL_B).to(gl.float32)
                    b2 = b2_s.index(iset).load(COL_B).to(gl.float32)
                    gc = gc_s.index(iset).load(LB).to(gl.float32)
                    a2 = gl.convert_layout(gl.where(o_sa <= pos, dots + 1.0, 0.0), ROW_B)
                    z2 = z2q + b2 - gl.sum(a2[:, None] * gc, 0) * c_i
                    out = q_b + _ln_fwd(z2, gam, bet, D, EPS)
                    gl.store(out_ptr + it * D + o_cb, out.to(OUT_DT))
                    if last:
                        gl.store(b2_ptr + it * D + o_cb, (b2 - gl.sum(gc, 0) * c_i).to(gl.float16))
    cp.wait_group(0)


def supported(q, k, v, gamma, beta, W1, b1, W2, b2, ck, cg1, cx2, cg2) -> bool:
    """Whether this kernel takes these inputs (else the caller runs the Triton kernel): sm_80 on, f = 64,
    F = 256, b = 16, fp16 state and cache, q, k, v, gamma, beta of one dtype, rows 16-byte aligned."""
    if not (q.is_cuda and torch.cuda.get_device_capability(q.device) >= (8, 0)):
        return False
    if q.shape[-1] != HEAD_DIM or W1.shape[-1] != HIDDEN or ck.shape[2] != MINI_BATCH:
        return False
    if not (all(t.dtype == torch.float16 for t in (W1, b1, W2, b2, ck, cg1, cx2, cg2))
            and q.dtype == k.dtype == v.dtype == gamma.dtype == beta.dtype):
        return False
    for t in (q, k, v):
        if t.stride(-1) != 1 or t.data_ptr() % 16 or any(st * t.element_size() % 16 for st in t.stride()[:-1]):
            return False
    return all(t.is_contiguous() and t.data_ptr() % 16 == 0 for t in (gamma, beta, W1, b1, W2, b2, ck, cg1, cx2, cg2))


def num_sms(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


def launch(q, k, v, eta, c, gamma, beta, pos, W1, b1, W2, b2, ck, cg1, cx2, cg2, out, programs_per_sm: int = 6):
    """Run the kernel into out [B, H, 64] (contiguous) for inputs that supported() takes."""
    B, H, f = q.shape
    n = B * H
    grid = (min(n, programs_per_sm * num_sms(q.device)),)
    _m2_dual_gluon_kernel[grid](
        q, k, v, eta, c, gamma, beta, pos, W1, b1, W2, b2, ck, cg1, cx2, cg2, out,
        n, H, q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), eta.stride(0),
        eta.stride(1), D=f, FH=W1.shape[-1], MB=ck.shape[2], BF=CHUNK, EPS=TTT_NORM_EPS, num_warps=1)
    return out


def compile_offline(capability: int = 90):
    """Compile the kernel for an NVIDIA target without a GPU (as ttt_linear.gluon_decode.compile_offline)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon._runtime import GluonASTSource

    ptrs = "q k v eta c gamma beta pos w1 b1 w2 b2 ck cg1 cx2 cg2 out".split()
    sig = {f"{n}_ptr": ("*fp32" if n == "eta" else "*i64" if n == "pos" else "*fp16") for n in ptrs}
    ints = "n_items H stride_qb stride_qh stride_kb stride_kh stride_vb stride_vh stride_eb stride_eh".split()
    sig.update({n: "i32" for n in ints})
    const = {"D": HEAD_DIM, "FH": HIDDEN, "MB": MINI_BATCH, "BF": CHUNK, "EPS": TTT_NORM_EPS}
    sig.update({n: "constexpr" for n in const})
    names = list(sig)
    aligned = [n for n in names if n.endswith("_ptr") or n in ints[1:8]]
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in aligned}
    src = GluonASTSource(fn=_m2_dual_gluon_kernel, signature=sig, constexprs=const, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", capability, 32), options={"num_warps": 1})
