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
           o_v, D: gl.constexpr, MB: gl.constexpr):
    """cp.async of everything item reads into buffer set buf: W1 [D, D], its cache rows s < pos [MB, D],
    the token's q, k, v, b1 and the head's LayerNorm gamma, beta [D]."""
    i_b = item // H
    i_h = item % H
    cp.async_copy_global_to_shared(w_s.index(buf), w1_ptr + item * (D * D) + w_off)
    cp.async_copy_global_to_shared(k_s.index(buf), ck_ptr + item * (MB * D) + c_off, mask=m_old)
    cp.async_copy_global_to_shared(g_s.index(buf), cg_ptr + item * (MB * D) + c_off, mask=m_old)
    cp.async_copy_global_to_shared(t_s.index(4 * buf), q_ptr + i_b * stride_qb + i_h * stride_qh + o_v)
    cp.async_copy_global_to_shared(t_s.index(4 * buf + 1), k_ptr + i_b * stride_kb + i_h * stride_kh + o_v)
    cp.async_copy_global_to_shared(t_s.index(4 * buf + 2), v_ptr + i_b * stride_vb + i_h * stride_vh + o_v)
    cp.async_copy_global_to_shared(b_s.index(buf), b1_ptr + item * D + o_v)
    cp.async_copy_global_to_shared(n_s.index(2 * buf), gamma_ptr + i_h * D + o_v)
    cp.async_copy_global_to_shared(n_s.index(2 * buf + 1), beta_ptr + i_h * D + o_v)


@gluon.jit
def _m1_dual_gluon_kernel(
    q_ptr, k_ptr, v_ptr, eta_ptr, c_ptr, gamma_ptr, beta_ptr, pos_ptr, w1_ptr, b1_ptr, ck_ptr, cg_ptr, out_ptr,
    n_items, H, stride_qb, stride_qh, stride_kb, stride_kh, stride_vb, stride_vh, stride_eb, stride_eh,
    D: gl.constexpr, MB: gl.constexpr, EPS: gl.constexpr, ROWS: gl.constexpr,
):
    # [R, D] tiles on one warp: 8 consecutive columns (16 bytes of fp16) a lane, 8 lanes across a row.
    L: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [1, 1], [1, 0])
    ROW: gl.constexpr = gl.SliceLayout(1, L)  # vectors along a tile's rows
    COL: gl.constexpr = gl.SliceLayout(0, L)  # vectors along its columns
    V1: gl.constexpr = gl.BlockedLayout([2], [32], [1], [0])  # a [D] vector's copy: 2 elements (4+ bytes) a lane
    SH: gl.constexpr = gl.SwizzledSharedLayout(8, 1, 8, [1, 0])
    SH1: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, [0])  # [n, D] vector buffers, indexed by n
    MMA: gl.constexpr = gl.NVMMADistributedLayout([2, 0], [1, 1], [16, 8])
    A_OP: gl.constexpr = gl.DotOperandLayout(0, MMA, 2)
    B_OP: gl.constexpr = gl.DotOperandLayout(1, MMA, 2)
    OUT_DT: gl.constexpr = out_ptr.dtype.element_ty

    # Two buffer sets: the item being computed and the next one in flight.
    w_s = gl.allocate_shared_memory(gl.float16, [2, D, D], SH)
    k_s = gl.allocate_shared_memory(gl.float16, [2, MB, D], SH)
    g_s = gl.allocate_shared_memory(gl.float16, [2, MB, D], SH)
    t_s = gl.allocate_shared_memory(q_ptr.dtype.element_ty, [8, D], SH1)  # q, k, v of set s at rows 4 s + 0..2
    b_s = gl.allocate_shared_memory(gl.float16, [2, D], SH1)
    n_s = gl.allocate_shared_memory(gamma_ptr.dtype.element_ty, [4, D], SH1)  # gamma, beta at rows 2 s, 2 s + 1

    o_w = gl.arange(0, D, layout=ROW)
    o_c = gl.arange(0, D, layout=COL)
    o_s = gl.arange(0, MB, layout=ROW)
    o_v = gl.arange(0, D, layout=V1)
    pos = gl.load(pos_ptr).to(gl.int32)
    c_i = gl.load(c_ptr + pos).to(gl.float32)
    w_off = o_w[:, None] * D + o_c[None, :]
    c_off = o_s[:, None] * D + o_c[None, :]
    m_old = (o_s < pos)[:, None] & (o_c < D)[None, :]
    m_cur = (o_s == pos)[:, None] & (o_c < D)[None, :]
    m_rows = o_s <= pos

    pid = gl.program_id(0)
    nprog = gl.num_programs(0)
    _issue(0, w_s, k_s, g_s, t_s, b_s, n_s, q_ptr, k_ptr, v_ptr, gamma_ptr, beta_ptr, w1_ptr, b1_ptr, ck_ptr, cg_ptr,
           pid, H, stride_qb, stride_qh, stride_kb, stride_kh, stride_vb, stride_vh, w_off, c_off, m_old, o_v, D, MB)
    cp.commit_group()
    eta_next = gl.load(eta_ptr + (pid // H) * stride_eb + (pid % H) * stride_eh).to(gl.float32)
    for it in range(pid, n_items, nprog):
        buf = ((it - pid) // nprog) % 2
        nxt = it + nprog
        # The other buffer set was read in the previous iteration (every lane is past those reads here).
        _barrier()
        if nxt < n_items:
            _issue(1 - buf, w_s, k_s, g_s, t_s, b_s, n_s, q_ptr, k_ptr, v_ptr, gamma_ptr, beta_ptr, w1_ptr, b1_ptr,
                   ck_ptr, cg_ptr, nxt, H, stride_qb, stride_qh, stride_kb, stride_kh, stride_vb, stride_vh, w_off,
                   c_off, m_old, o_v, D, MB)
        cp.commit_group()
        eta = eta_next
        nxt_c = gl.minimum(nxt, n_items - 1)
        eta_next = gl.load(eta_ptr + (nxt_c // H) * stride_eb + (nxt_c % H) * stride_eh).to(gl.float32)

        cp.wait_group(1)  # this item's copies (the next item's stay in flight)
        _barrier()  # ... and the other lanes' parts of them
        q_sm = t_s.index(4 * buf)
        k_sm = t_s.index(4 * buf + 1)
        q = q_sm.load(COL).to(gl.float32)
        k = k_sm.load(COL).to(gl.float32)
        v = t_s.index(4 * buf + 2).load(COL).to(gl.float32)
        b1 = b_s.index(buf).load(COL).to(gl.float32)
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


def offsets_fit(*tensors) -> bool:
    """Whether every element offset of these tensors fits the kernels' int32 arithmetic (item * D * D and
    the like are int32 there; the Triton kernels, which take over otherwise, index with int64)."""
    return all(t.numel() < 2 ** 31 for t in tensors)


def copyable(q, k, v, gamma, beta, *state) -> bool:
    """What both M1 Gluon kernels need of their inputs: a CUDA device with cp.async (sm_80 on), f = 64,
    q, k, v of one dtype and gamma, beta of one dtype, every row the kernel copies 16-byte aligned with
    contiguous columns (cp.async copies 4-16 bytes a lane), the state tensors fp16, contiguous and
    small enough for int32 offsets (offsets_fit)."""
    if not (q.is_cuda and torch.cuda.get_device_capability(q.device) >= (8, 0)):
        return False
    if q.shape[-1] != HEAD_DIM or not (q.dtype == k.dtype == v.dtype and gamma.dtype == beta.dtype):
        return False
    if not all(t.dtype == torch.float16 for t in state) or not offsets_fit(*state):
        return False
    for t in (q, k, v):
        if t.stride(-1) != 1 or t.data_ptr() % 16 or any(st * t.element_size() % 16 for st in t.stride()[:-1]):
            return False
    return all(t.is_contiguous() and t.data_ptr() % 16 == 0 for t in (gamma, beta, *state))


def supported(q, k, v, gamma, beta, W1, b1, ck, cg1) -> bool:
    """Whether this kernel takes these inputs (else the caller runs the Triton kernel): those of
    copyable(), with W1, b1 and the cache as the state, and mini-batch 16 (mma.sync's K)."""
    return ck.shape[2] == MINI_BATCH and copyable(q, k, v, gamma, beta, W1, b1, ck, cg1)


@functools.lru_cache(maxsize=None)
def num_sms(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


def launch(q, k, v, eta, c, gamma, beta, pos, W1, b1, ck, cg1, out, programs_per_sm: int = 8, rows: int = 16):
    """Run the kernel into out [B, H, 64] (contiguous) for inputs that supported() takes: programs_per_sm
    persistent programs a multiprocessor (at most the number of items), W1 read from shared memory in
    rows-row slices."""
    B, H, f = q.shape
    n = B * H
    grid = (min(n, programs_per_sm * num_sms(q.device)),)
    _m1_dual_gluon_kernel[grid](
        q, k, v, eta, c, gamma, beta, pos, W1, b1, ck, cg1, out,
        n, H, q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), eta.stride(0),
        eta.stride(1), D=f, MB=ck.shape[2], EPS=TTT_NORM_EPS, ROWS=rows, num_warps=1)
    return out


def compile_for_target(fn, ptrs: list[str], consts: dict, capability: int = 90):
    """Compile an M1 Gluon kernel for an NVIDIA target without a GPU (Triton's bundled ptxas): fp16
    pointers (eta float32, pos int64), int32 sizes and strides, the launch's 16-byte divisibility of
    pointers and strides assumed. For inspection (registers, SASS) and for the CPU test that catches a
    Gluon API change; needs TRITON_INTERPRET unset at import."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon._runtime import GluonASTSource

    sig = {f"{n}_ptr": ("*fp32" if n == "eta" else "*i64" if n == "pos" else "*fp16") for n in ptrs}
    ints = "n_items H stride_qb stride_qh stride_kb stride_kh stride_vb stride_vh stride_eb stride_eh".split()
    sig.update({n: "i32" for n in ints})
    sig.update({n: "constexpr" for n in consts})
    names = list(sig)
    aligned = [n for n in names if n.endswith("_ptr") or n in ints[1:8]]
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in aligned}
    src = GluonASTSource(fn=fn, signature=sig, constexprs=consts, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", capability, 32), options={"num_warps": 1})


def compile_offline(capability: int = 90, rows: int = 16):
    """This kernel compiled for an NVIDIA target without a GPU (compile_for_target)."""
    return compile_for_target(_m1_dual_gluon_kernel, "q k v eta c gamma beta pos w1 b1 ck cg out".split(),
                              {"D": HEAD_DIM, "MB": MINI_BATCH, "EPS": TTT_NORM_EPS, "ROWS": rows}, capability)
