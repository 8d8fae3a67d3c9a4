"""The TTT block's elementwise decode work in two Triton kernels (reference: ops/ttt_block.py).

Unfused, torch.compile turned this work into about 12 kernels per block, 3 of them copies of whole conv
rings (the in-place slot write of a ring, functionalized, became a new ring plus a copy back: 0.9 ms of
a 6.1 ms ttt-1b M1 step at B = 512 on the H200, exp/NOTES.md). Here each step is one kernel that reads
and writes only what its data flow needs, and writes the ring slot in place (the custom op says so).

`pre_conv_step` (one batch row per program, the whole row in registers: both RMSNorms reduce over it):
    reads  h (B D r), delta (B D a; s B D a as s K-split partial sums, ops.split_k), the ring's W-1 taps
           ((W-1) B D a), norm and conv weights
    writes h (B D r), x (B D a), the ring slot (B D a)               r: residual item, a: activation item
`qk_prep` (one batch row per program; the rotary pairs are adjacent columns, split apart in registers):
    reads  q0, lr (B (D + H) a), the ring's W-1 taps ((W-1) B D a), both convs' weights, the rotary row
    writes q, k (2 B D a), the ring slot (B D a), eta (B H 4), c (b, first program only)
    The q and k convs read the same input q0, so they share one ring and each tap is loaded once for
    both: at ttt-1b's D = 2048, W = 4, fp16, B = 512 that is 14 MiB a launch (two rings were 22 MiB).

Arithmetic in float32 (float64 with float64 inputs); values are rounded to the weights' dtype where the
PyTorch path rounds them, so the kernels agree with it to the rounding of the last operation.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ttt_decode.ops import ttt_triton_common as tc
from ttt_decode.ops.kernel_op import check_interpreter, kernel_op
from ttt_decode.ops.split_k import load_sum_parts


@triton.jit
def _rms_row(x, w, dim, eps, OUT: tl.constexpr, COMPUTE: tl.constexpr):
    """RMSNorm of one row held in registers: w * round(x / rms(x)), the product rounded to OUT (w: the
    norm's weights for the row's columns, loaded by the caller before anything waits)."""
    ms = tl.sum(x * x, axis=0) / dim
    y = (x * (1.0 / tl.sqrt(ms + eps))).to(OUT)
    return (w.to(COMPUTE) * y.to(COMPUTE)).to(OUT)


@triton.jit
def _pre_conv_kernel(h_ptr, delta_ptr, nc_ptr, ring_ptr, cpos_ptr, cw_ptr, cb_ptr, ns_ptr, hout_ptr, x_ptr,
                     dim, stride_h, stride_d, stride_part, eps,
                     HAS_DELTA: tl.constexpr, PARTS: tl.constexpr, HAS_BIAS: tl.constexpr, WIDTH: tl.constexpr,
                     BLOCK: tl.constexpr,
                     COMPUTE: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    o = tl.arange(0, BLOCK)
    m = o < dim
    ACT: tl.constexpr = x_ptr.dtype.element_ty
    RES: tl.constexpr = hout_ptr.dtype.element_ty
    b_h = tl.load(h_ptr + row * stride_h + o, mask=m, other=0.0)
    if HAS_DELTA:
        # PARTS > 1: delta is the down projection's K-split partial sums (ops.split_k), added left to right.
        b_h = b_h + load_sum_parts(delta_ptr + row * stride_d + o, stride_part, m, PARTS, RES)
    b_h = b_h.to(COMPUTE)
    pos = tl.load(cpos_ptr)
    ring_base = row * WIDTH * dim
    y_old, w_new = tc.ring_old_taps(ring_ptr, ring_base, pos, cw_ptr, cb_ptr, o, m, dim, WIDTH, HAS_BIAS, COMPUTE)
    w_c = tl.load(nc_ptr + o, mask=m, other=0.0)
    w_s = tl.load(ns_ptr + o, mask=m, other=0.0)
    xc = _rms_row(b_h, w_c, dim, eps, ACT, COMPUTE)
    y = y_old + xc.to(COMPUTE) * w_new
    tl.store(ring_ptr + ring_base + pos * dim + o, xc.to(ring_ptr.dtype.element_ty), mask=m)
    b_h = (b_h + y.to(ACT).to(COMPUTE)).to(RES)
    tl.store(hout_ptr + row * dim + o, b_h, mask=m)
    x = _rms_row(b_h.to(COMPUTE), w_s, dim, eps, ACT, COMPUTE)
    tl.store(x_ptr + row * dim + o, x, mask=m)


@triton.jit
def _qk_prep_kernel(p_ptr, ring_ptr, cpos_ptr, wq_ptr, bq_ptr, wk_ptr, bk_ptr, cos_ptr, sin_ptr, pos_ptr,
                    lrb_ptr, tok_ptr, q_ptr, k_ptr, eta_ptr, c_ptr,
                    dim, heads, stride_p, lr_col, eta_scale, mb,
                    HEAD_DIM: tl.constexpr, HAS_BIAS: tl.constexpr, WIDTH: tl.constexpr,
                    BLOCK: tl.constexpr,
                    BLOCK_H: tl.constexpr, BLOCK_MB: tl.constexpr, COMPUTE: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    ACT: tl.constexpr = q_ptr.dtype.element_ty
    RING: tl.constexpr = ring_ptr.dtype.element_ty
    o = tl.arange(0, BLOCK)
    m = o < dim
    x = tl.load(p_ptr + row * stride_p + o, mask=m, other=0.0).to(COMPUTE)
    cpos = tl.load(cpos_ptr)
    base = row * WIDTH * dim
    # The rotary row of this mini-batch position, pair j of a head at column j mod f/2; the torch path
    # rounds the factors and the conv outputs to the activation dtype.
    jj = tl.arange(0, BLOCK // 2) % (HEAD_DIM // 2)
    m_half = tl.arange(0, BLOCK // 2) < dim // 2
    rot = tl.load(pos_ptr) * (HEAD_DIM // 2)
    cos = tl.load(cos_ptr + rot + jj, mask=m_half, other=0.0).to(ACT).to(COMPUTE)
    sin = tl.load(sin_ptr + rot + jj, mask=m_half, other=0.0).to(ACT).to(COMPUTE)

    # Both convs' old taps first (see tc.ring_old_taps), then the new input's terms.
    q_old, wq_new, k_old, wk_new = tc.ring_old_taps_qk(ring_ptr, base, cpos, wq_ptr, bq_ptr, wk_ptr, bk_ptr, o, m,
                                                     dim, WIDTH, HAS_BIAS, COMPUTE)
    q = tc.rotary((q_old + x * wq_new).to(ACT).to(COMPUTE), cos, sin, BLOCK)
    tl.store(q_ptr + row * dim + o, q.to(ACT), mask=m)
    k = tc.rotary((k_old + x * wk_new).to(ACT).to(COMPUTE), cos, sin, BLOCK)
    tl.store(k_ptr + row * dim + o, k.to(ACT), mask=m)
    # The new input into the ring (after the taps above were read).
    tl.store(ring_ptr + base + cpos * dim + o, x.to(RING), mask=m)

    o_h = tl.arange(0, BLOCK_H)
    m_h = o_h < heads
    lr = tl.load(p_ptr + row * stride_p + lr_col + o_h, mask=m_h, other=0.0).to(COMPUTE)
    lr = lr + tl.load(lrb_ptr + o_h, mask=m_h, other=0.0).to(COMPUTE)
    tl.store(eta_ptr + row * heads + o_h, (eta_scale / (1.0 + tl.exp(-lr))).to(eta_ptr.dtype.element_ty), mask=m_h)

    # Token coefficients c_i = max(0, 1/(i+1) + learnable_i), rounded as the parameter: one program.
    o_mb = tl.arange(0, BLOCK_MB)
    m_mb = (o_mb < mb) & (row == 0)
    TOK: tl.constexpr = c_ptr.dtype.element_ty
    base_c = (1.0 / (o_mb + 1).to(tl.float32)).to(TOK).to(COMPUTE)
    tok = tl.load(tok_ptr + o_mb, mask=m_mb, other=0.0).to(COMPUTE)
    tl.store(c_ptr + o_mb, tl.maximum((base_c + tok).to(TOK).to(COMPUTE), 0.0).to(TOK), mask=m_mb)


@triton.jit
def _gate_norm_kernel(z_ptr, g_ptr, w_ptr, b_ptr, out_ptr, dim, stride_z, stride_g, eps,
                      HAS_GATE: tl.constexpr, BLOCK: tl.constexpr, COMPUTE: tl.constexpr):
    """One row: gelu_tanh(g) * LayerNorm(z), each rounded to the output dtype where the PyTorch path
    rounds (the LayerNorm's output, the gate, the product)."""
    row = tl.program_id(0).to(tl.int64)
    o = tl.arange(0, BLOCK)
    m = o < dim
    OUT: tl.constexpr = out_ptr.dtype.element_ty
    z = tl.load(z_ptr + row * stride_z + o, mask=m, other=0.0).to(COMPUTE)
    w = tl.load(w_ptr + o, mask=m, other=0.0).to(COMPUTE)
    b = tl.load(b_ptr + o, mask=m, other=0.0).to(COMPUTE)
    if HAS_GATE:
        g = tl.load(g_ptr + row * stride_g + o, mask=m, other=0.0).to(COMPUTE)
    mean = tl.sum(z, axis=0) / dim
    d = tl.where(m, z - mean, 0.0)
    y = (d * (1.0 / tl.sqrt(tl.sum(d * d, axis=0) / dim + eps)) * w + b).to(OUT)
    if HAS_GATE:
        y = (tc.gelu(g).to(OUT).to(COMPUTE) * y.to(COMPUTE)).to(OUT)
    tl.store(out_ptr + row * dim + o, y, mask=m)


def _compute(*tensors) -> tl.dtype:
    return tl.float64 if any(t.dtype == torch.float64 for t in tensors) else tl.float32


def _warps(block: int) -> int:
    """Warps for a program holding `block` columns: 256 columns a warp (8 per thread), 1..16."""
    return max(1, min(16, block // 256))


def _pre_conv_impl(h, delta, norm_c, ring, conv_pos, conv_w, conv_b, norm_s, eps, num_warps=None):
    B, D = h.shape
    h_out = torch.empty((B, D), dtype=h.dtype, device=h.device)
    x = torch.empty((B, D), dtype=norm_s.dtype, device=h.device)
    block = triton.next_power_of_2(D)
    parts = delta is not None and delta.dim() == 3  # K-split partial sums [s, B, D]
    _pre_conv_kernel[(B,)](
        h, delta if delta is not None else h, norm_c, ring, conv_pos, conv_w, conv_b if conv_b is not None else conv_w,
        norm_s, h_out, x, D, h.stride(0), delta.stride(-2) if delta is not None else 0,
        delta.stride(0) if parts else 0, eps,
        HAS_DELTA=delta is not None, PARTS=delta.shape[0] if parts else 1, HAS_BIAS=conv_b is not None,
        WIDTH=ring.shape[1], BLOCK=block,
        COMPUTE=_compute(h, ring), num_warps=num_warps or _warps(block))
    return h_out, x


def _pre_conv_fake(h, delta, norm_c, ring, conv_pos, conv_w, conv_b, norm_s, eps):
    return torch.empty_like(h), torch.empty(h.shape, dtype=norm_s.dtype, device=h.device)


def _qk_prep_outputs(p, ring, num_heads, token_idx):
    B, D = p.shape[0], ring.shape[2]
    f = D // num_heads
    q = torch.empty((B, num_heads, f), dtype=p.dtype, device=p.device)
    eta = torch.empty((B, num_heads), dtype=torch.float64 if p.dtype == torch.float64 else torch.float32,
                      device=p.device)
    return q, torch.empty_like(q), eta, torch.empty_like(token_idx)


def _qk_prep_fake(p, ring, conv_pos, wq, bq, wk, bk, rope_cos, rope_sin, pos, lr_bias, token_idx,
                  base_lr, num_heads, lr_col):
    return _qk_prep_outputs(p, ring, num_heads, token_idx)


def qk_prep_launch(p, ring, conv_pos, wq, bq, wk, bk, rope_cos, rope_sin, pos, lr_bias, token_idx,
                   base_lr, num_heads, lr_col, num_warps=None):
    """qk_prep's kernel, unchecked (the custom op's implementation; the M1 dual step runs it before the
    Gluon kernel)."""
    q, k, eta, c = _qk_prep_outputs(p, ring, num_heads, token_idx)
    B, W, D = ring.shape
    f = D // num_heads
    block = triton.next_power_of_2(D)
    _qk_prep_kernel[(B,)](
        p, ring, conv_pos, wq, bq if bq is not None else wq, wk, bk if bk is not None else wk,
        rope_cos, rope_sin, pos, lr_bias, token_idx, q, k, eta, c,
        D, num_heads, p.stride(0), lr_col, base_lr / f, token_idx.shape[0],
        HEAD_DIM=f, HAS_BIAS=bq is not None, WIDTH=W, BLOCK=block,
        BLOCK_H=triton.next_power_of_2(num_heads),
        BLOCK_MB=triton.next_power_of_2(token_idx.shape[0]), COMPUTE=_compute(p, ring),
        num_warps=num_warps or _warps(block))
    return q, k, eta, c


def _gate_norm_impl(z, g, weight, bias, eps, num_warps=None):
    return gate_norm_launch(z, g, weight, bias, eps, torch.empty(z.shape, dtype=z.dtype, device=z.device), num_warps)


def gate_norm_launch(z, g, weight, bias, eps, out, num_warps=None):
    """gate_norm's kernel into out [B, D] (contiguous), unchecked (the custom op's implementation; a dual
    step whose kernel could not fuse it runs this after)."""
    B, D = z.shape
    block = triton.next_power_of_2(D)
    _gate_norm_kernel[(B,)](
        z, g if g is not None else z, weight, bias, out, D, z.stride(0), g.stride(0) if g is not None else 0, eps,
        HAS_GATE=g is not None, BLOCK=block, COMPUTE=_compute(z), num_warps=num_warps or _warps(block))
    return out


def gate_norm_rows(out, p, gn: dict | None):
    """A dual step's post-norm where its kernel did not fold it (the dispatcher's choice, or a route that cannot):
    gate_norm's kernel over out [B, H, f] (the gate from p's columns gn["g_col"] .., none if -1) into gn["y"]
    (ops.ttt_triton_common.gn_kernel_args' dict); nothing where gn is None. Returns out."""
    if gn is None:
        return out
    dim = out.shape[1] * out.shape[2]
    g = p[:, gn["g_col"]:gn["g_col"] + dim] if gn["g_col"] >= 0 else None
    gate_norm_launch(out.view(out.shape[0], dim), g, gn["norm_w"], gn["norm_b"], gn["eps"], gn["y"])
    return out


def _gate_norm_fake(z, g, weight, bias, eps):
    return torch.empty(z.shape, dtype=z.dtype, device=z.device)


kernel_op("ttt_pre_conv_step", ["Tensor h", "Tensor? delta", "Tensor norm_c", "Tensor ring", "Tensor conv_pos",
                                "Tensor conv_w", "Tensor? conv_b", "Tensor norm_s", "float eps"],
          ("ring",), _pre_conv_impl, _pre_conv_fake, returns="(Tensor, Tensor)")
kernel_op("ttt_qk_prep", ["Tensor p", "Tensor ring", "Tensor conv_pos", "Tensor wq", "Tensor? bq",
                          "Tensor wk", "Tensor? bk", "Tensor rope_cos", "Tensor rope_sin", "Tensor pos",
                          "Tensor lr_bias", "Tensor token_idx", "float base_lr", "int num_heads", "int lr_col"],
          ("ring",), qk_prep_launch, _qk_prep_fake, returns="(Tensor, Tensor, Tensor, Tensor)")

kernel_op("ttt_gate_norm", ["Tensor z", "Tensor? g", "Tensor weight", "Tensor bias", "float eps"], (),
          _gate_norm_impl, _gate_norm_fake)


def pre_conv_step(h, delta, norm_c, ring, conv_pos, conv_w, conv_b, norm_s, eps: float):
    """Fused; same signature and semantics as ttt_block.pre_conv_step."""
    check_interpreter()
    B, D = h.shape
    assert h.stride(1) == 1 and (delta is None or (delta.shape[-2:] == h.shape and delta.dim() in (2, 3)
                                                  and delta.stride(-1) == 1)), \
        "pre_conv_step: h must be [B, D] and delta [B, D] or partial sums [s, B, D], with contiguous rows"
    assert norm_c.is_contiguous() and norm_s.is_contiguous() and norm_c.shape == norm_s.shape == (D,)
    tc.check_ring("pre_conv_step", ring, conv_pos, conv_w, conv_b, B, D)
    return torch.ops.ttt_decode.ttt_pre_conv_step(h, delta, norm_c, ring, conv_pos, conv_w, conv_b, norm_s, eps)


def qk_prep(p, ring, conv_pos, wq, bq, wk, bk, rope_cos, rope_sin, pos, lr_bias, token_idx,
            base_lr: float, num_heads: int, lr_col: int):
    """Fused; same signature and semantics as ttt_block.qk_prep."""
    check_interpreter()
    tc.check_qk_inputs("qk_prep", p, ring, conv_pos, wq, bq, wk, bk, rope_cos, rope_sin, pos, lr_bias, token_idx,
                       num_heads, lr_col)
    return torch.ops.ttt_decode.ttt_qk_prep(p, ring, conv_pos, wq, bq, wk, bk, rope_cos, rope_sin, pos, lr_bias,
                                            token_idx, base_lr, num_heads, lr_col)


def gate_norm(z, g, weight, bias, eps: float):
    """Fused; same signature and semantics as ttt_block.gate_norm."""
    check_interpreter()
    B, D = z.shape
    assert z.stride(1) == 1 and (g is None or (g.shape == z.shape and g.stride(1) == 1)), \
        "gate_norm: z and g must be [B, D] with contiguous rows"
    assert weight.is_contiguous() and bias.is_contiguous() and weight.shape == bias.shape == (D,), \
        f"gate_norm: LayerNorm weight and bias must be contiguous [{D}]"
    return torch.ops.ttt_decode.ttt_gate_norm(z, g, weight, bias, eps)
