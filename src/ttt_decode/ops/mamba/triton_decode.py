"""Triton decode step of the Mamba-1 recurrence (DESIGN section 5); the reference is naive.py, same signatures.

Letters: B batch, D channels (d_inner), S state size, W conv width; a = activation item size (x, z, dt,
outputs, conv ring), s = state item size, p = parameter item size.

`ssm_step` (the fused kernel; one pass over the state [B, D, S]):
    dt = softplus(dt + dt_bias); h <- h * exp(dt * A) + dt * B * x_c with A = -exp(A_log);
    y = (h . C + D * x_c) * silu(z); and the conv-state update: the new input x goes into the ring
    slot conv_pos (conv_state [B, W, D], see naive.py), which replaces the shift of a [B, D, W] window.
    Compulsory bytes per call: 2 B D S s (state read + write) + 4 B D a (x, x_c, z, dt read)
        + 2 B S a (B, C) + B D a (conv slot write) + B D a (y write) + D (S + 2) p (A_log, D, dt_bias).
    FLOPs per call: about B D (7 S + 13) (per state element dt*A, exp, h*dA + dtx*B, h*C and its sum;
        per channel softplus, dt*x, D skip, silu gate), the exp counted as one.
    Grid: (cdiv(D, BLOCK_D), cdiv(B, ROWS)); a program holds a [ROWS, BLOCK_D, S] tile of the state (ROWS = 1
        by default, see ssm_config).
    Mutates: ssm_state (advanced one token, stored in its own dtype: fp32, fp16 or bf16; fp64 too),
        conv_state (one slot). conv_pos is read, never moved (the model advances it once per token).

`conv_step` (runs before x_proj, which needs its output; mutates nothing):
    x_c = silu(bias + sum_j w_j u_j) over the W-1 newest ring slots and the new input x; the weights
    tap-major, taps [W, D] (the model keeps that copy in its decode state: MambaInferenceState.taps).
    Compulsory bytes per call: (W - 1) B D a (ring slots) + B D a (x) + B D a (x_c) + D (W + 1) p.
    FLOPs per call: about B D (2 W + 4).   Grid: (cdiv(D, BLOCK_D), cdiv(B, ROWS)).

`add_rms_norm` (the block boundary; mutates nothing): h_new = h + delta, x = RMSNorm(h_new) * weight, with
    models.common.RMSNorm's arithmetic. One kernel instead of the ~8 elementwise launches of the eager
    norm and residual add, which cost more than the state update at small batch.
    Compulsory bytes per call: B d (2 r + 2 a) (h read, h_new written in the residual dtype r; delta read,
    x written) + d a (weight).   FLOPs: about 5 B d.   Grid: (B,), one row per program.

Why a ring and two kernels: x_proj needs the conv output of every channel before the state update
can start, so the conv output cannot come from the state pass. With the usual shifting [B, D, W]
window the conv costs 2 W a per channel (read + write the window); with the ring it costs W a
((W - 1) slots read, 1 slot written), and the slot write rides along in the state pass.

Arithmetic in float32 (float64 when the state or inputs are float64). The kernels are torch custom ops
(`ttt_decode::mamba_ssm_step` with exact mutates_args, `ttt_decode::mamba_conv_step`,
`ttt_decode::mamba_add_rms_norm`) with fake implementations, so a step using them compiles under
torch.compile(fullgraph=True) (the state tensors are passed to the op in place, no copies) and is
captured in a CUDA graph. No autotuning: ssm_step updates the state in place, so its configuration is
picked by hand (`ssm_config`, `conv_config`: sweeps on the H100, then the H200). Inputs are asserted
contiguous along D (row strides are taken as given); nothing is copied.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ttt_decode.ops.kernel_op import kernel_op
from ttt_decode.ops.mamba.triton_math import compute_dtype as _compute
from ttt_decode.ops.mamba.triton_math import sigmoid as _sigmoid
from ttt_decode.ops.mamba.triton_math import softplus as _softplus
from ttt_decode.ops.split_k import load_sum_parts


@triton.jit
def _ssm_step_kernel(
    x_ptr, xc_ptr, z_ptr, dt_ptr, b_ptr, c_ptr,
    alog_ptr, dskip_ptr, dtb_ptr,
    conv_ptr, pos_ptr, state_ptr, out_ptr,
    batch, dim, dstate,
    stride_x, stride_xc, stride_z, stride_dt, stride_b, stride_c,
    WIDTH: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_S: tl.constexpr, ROWS: tl.constexpr,
    COMPUTE: tl.constexpr,
):
    pid_d = tl.program_id(0)
    pid_r = tl.program_id(1)
    o_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)  # [BD]
    o_s = tl.arange(0, BLOCK_S)  # [BS]
    o_r = (pid_r * ROWS + tl.arange(0, ROWS)).to(tl.int64)  # [R]
    m_d = o_d < dim
    m_s = o_s < dstate
    m_r = o_r < batch
    m_ds = m_d[:, None] & m_s[None, :]  # [BD, BS]
    m_rd = m_r[:, None] & m_d[None, :]  # [R, BD]
    m_rs = m_r[:, None] & m_s[None, :]  # [R, BS]
    m_h = m_r[:, None, None] & m_ds[None, :, :]  # [R, BD, BS]

    # State tile first: the one large transfer, in flight while the small inputs arrive.
    p_h = state_ptr + o_r[:, None, None] * dim * dstate + (o_d[:, None] * dstate + o_s[None, :])[None, :, :]
    b_h = tl.load(p_h, mask=m_h, other=0.0).to(COMPUTE)  # [R, BD, BS]

    b_A = -tl.exp(tl.load(alog_ptr + o_d[:, None] * dstate + o_s[None, :], mask=m_ds, other=0.0).to(COMPUTE))
    b_D = tl.load(dskip_ptr + o_d, mask=m_d, other=0.0).to(COMPUTE)  # [BD]
    b_dtb = tl.load(dtb_ptr + o_d, mask=m_d, other=0.0).to(COMPUTE)  # [BD]
    b_x = tl.load(x_ptr + o_r[:, None] * stride_x + o_d[None, :], mask=m_rd, other=0.0)  # [R, BD]
    b_xc = tl.load(xc_ptr + o_r[:, None] * stride_xc + o_d[None, :], mask=m_rd, other=0.0).to(COMPUTE)
    b_z = tl.load(z_ptr + o_r[:, None] * stride_z + o_d[None, :], mask=m_rd, other=0.0).to(COMPUTE)
    b_dt = tl.load(dt_ptr + o_r[:, None] * stride_dt + o_d[None, :], mask=m_rd, other=0.0).to(COMPUTE)
    b_B = tl.load(b_ptr + o_r[:, None] * stride_b + o_s[None, :], mask=m_rs, other=0.0).to(COMPUTE)  # [R, BS]
    b_C = tl.load(c_ptr + o_r[:, None] * stride_c + o_s[None, :], mask=m_rs, other=0.0).to(COMPUTE)
    pos = tl.load(pos_ptr)

    delta = _softplus(b_dt + b_dtb[None, :])  # [R, BD]
    dA = tl.exp(delta[:, :, None] * b_A[None, :, :])
    b_h = b_h * dA + (delta * b_xc)[:, :, None] * b_B[:, None, :]
    tl.store(p_h, b_h.to(state_ptr.dtype.element_ty), mask=m_h)

    y = tl.sum(b_h * b_C[:, None, :], axis=2) + b_D[None, :] * b_xc
    y = y * (b_z * _sigmoid(b_z))
    tl.store(out_ptr + o_r[:, None] * dim + o_d[None, :], y.to(out_ptr.dtype.element_ty), mask=m_rd)
    tl.store(conv_ptr + o_r[:, None] * WIDTH * dim + pos * dim + o_d[None, :],
             b_x.to(conv_ptr.dtype.element_ty), mask=m_rd)


@triton.jit
def _conv_step_kernel(
    x_ptr, conv_ptr, pos_ptr, w_ptr, bias_ptr, out_ptr,
    batch, dim, stride_x,
    WIDTH: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_D: tl.constexpr, ROWS: tl.constexpr,
    COMPUTE: tl.constexpr,
):
    pid_d = tl.program_id(0)
    pid_r = tl.program_id(1)
    o_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)  # [BD]
    o_r = (pid_r * ROWS + tl.arange(0, ROWS)).to(tl.int64)  # [R]
    m_d = o_d < dim
    m_rd = (o_r < batch)[:, None] & m_d[None, :]  # [R, BD]
    pos = tl.load(pos_ptr)
    # Tap-major weights [W, D]: each tap is one contiguous row, loaded as a [ROWS, BLOCK_D] tile (the same
    # row for every batch row; the repeats come from L1) so that it has the ring tiles' layout and needs no
    # conversion. Taken out of a [BLOCK_D, W] tile in registers, the taps cost barriers and shared-memory
    # layout conversions (as in the TTT block's kernels, ttt_block_triton.py).
    o_w = (o_r * 0)[:, None] + o_d[None, :]  # [R, BD]: the channel offsets, repeated over the rows
    m_w = (o_r >= 0)[:, None] & m_d[None, :]
    b_x = tl.load(x_ptr + o_r[:, None] * stride_x + o_d[None, :], mask=m_rd, other=0.0).to(COMPUTE)
    acc = b_x * tl.load(w_ptr + (WIDTH - 1) * dim + o_w, mask=m_w, other=0.0).to(COMPUTE)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + o_w, mask=m_w, other=0.0).to(COMPUTE)
    for j in tl.static_range(WIDTH - 1):
        slot = (pos + 1 + j) % WIDTH
        tap = tl.load(conv_ptr + o_r[:, None] * WIDTH * dim + slot * dim + o_d[None, :], mask=m_rd, other=0.0)
        acc += tap.to(COMPUTE) * tl.load(w_ptr + j * dim + o_w, mask=m_w, other=0.0).to(COMPUTE)
    y = acc * _sigmoid(acc)
    tl.store(out_ptr + o_r[:, None] * dim + o_d[None, :], y.to(out_ptr.dtype.element_ty), mask=m_rd)


@triton.jit
def _add_rms_norm_kernel(h_ptr, d_ptr, w_ptr, hout_ptr, x_ptr, dim, stride_h, stride_d, stride_part, eps,
                         PARTS: tl.constexpr, BLOCK: tl.constexpr, COMPUTE: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    o = tl.arange(0, BLOCK)
    m = o < dim
    b_h = tl.load(h_ptr + row * stride_h + o, mask=m, other=0.0)
    RES: tl.constexpr = hout_ptr.dtype.element_ty
    # delta is rounded to the residual dtype first, as `h + delta.to(h.dtype)` does; PARTS > 1: out_proj's K-split
    # partial sums (ops.split_k), added left to right in the residual dtype.
    b_h = (b_h + load_sum_parts(d_ptr + row * stride_d + o, stride_part, m, PARTS, RES)).to(COMPUTE)
    tl.store(hout_ptr + row * dim + o, b_h.to(hout_ptr.dtype.element_ty), mask=m)
    ms = tl.sum(b_h * b_h, axis=0) / dim
    b_y = (b_h * (1.0 / tl.sqrt(ms + eps))).to(hout_ptr.dtype.element_ty).to(x_ptr.dtype.element_ty)
    b_w = tl.load(w_ptr + o, mask=m, other=0.0)
    tl.store(x_ptr + row * dim + o, (b_w.to(COMPUTE) * b_y.to(COMPUTE)).to(x_ptr.dtype.element_ty), mask=m)


def _pow2_rows(batch: int, rows: int) -> int:
    return max(1, min(rows, triton.next_power_of_2(batch)))


# Batch from which the H200 sweep's large-batch state-pass configuration wins (measured at 64, 512, 1024).
LARGE_BATCH = 256


def ssm_config(batch: int, state_dtype: torch.dtype, dstate: int) -> dict:
    """Hand-picked launch configuration (no autotune: the state is updated in place). One batch row per
    program; the state tile and warps by state item size, from the H200 sweep at mamba-1.4b shapes
    (exp/results/h200/mamba_config_sweep_h200_64560f1.jsonl; 14 configurations, B = 64 / 512 / 1024):
      - 2-byte state (fp16, bf16): BLOCK_D * S = 2048 elements, 2 warps: 45.5 us against 49.1 for the
        4 warps the H100 sweep picked (B=512), 90.4 against 96.5 (B=1024);
      - fp32 state from B = 256: 1024 elements, 1 warp: 74.4 against 79.0 us (B=512), 146 against 153
        (B=1024); below, 2048 elements and 4 warps (B=64: 8.2 against 8.5 us);
      - fp64 state: 2048 elements, 4 warps (not timed: a reference dtype).
    Several rows per program lost everywhere (by 15-50% on the H200; by 3-22% on the H100,
    exp/notes_mamba.md)."""
    block_s = triton.next_power_of_2(dstate)
    item = torch.empty((), dtype=state_dtype).element_size()
    if item == 2:
        elements, warps = 2048, 2
    elif item == 4 and batch >= LARGE_BATCH:
        elements, warps = 1024, 1
    else:
        elements, warps = 2048, 4
    return {"BLOCK_D": max(16, min(512, elements // block_s)), "ROWS": 1, "num_warps": warps}


def conv_config(batch: int) -> dict:
    """256 channels x 2 rows, 4 warps. The H200 sweep timed 512 x 4 on 8 warps at 5.25 us against 6.75 (B=512),
    but with its 16 MB ring resident in L2 across replays; inside the decode step, where the ring comes from
    HBM, both took 7.35 us a layer (exp/NOTES.md, sixth session), so the H100's choice stays."""
    return {"BLOCK_D": 256, "ROWS": _pow2_rows(batch, 2), "num_warps": 4}


def _rows_ok(t: torch.Tensor, name: str, rows: int, cols: int) -> None:
    assert t.dim() == 2 and tuple(t.shape) == (rows, cols), f"{name}: expected [{rows}, {cols}], got {tuple(t.shape)}"
    assert t.stride(1) == 1 or cols == 1, f"{name} must be contiguous along its last dim (stride {t.stride()})"


def _check_ssm(x, x_c, z, dt, B, C, A_log, D, dt_bias, conv_state, conv_pos, ssm_state):
    Bsz, Dm, S = ssm_state.shape
    W = conv_state.shape[1]
    for name, t in (("x", x), ("x_c", x_c), ("z", z), ("dt", dt)):
        _rows_ok(t, name, Bsz, Dm)
    _rows_ok(B, "B", Bsz, S)
    _rows_ok(C, "C", Bsz, S)
    assert tuple(A_log.shape) == (Dm, S) and A_log.is_contiguous(), "A_log must be contiguous [D, S]"
    assert tuple(D.shape) == (Dm,) and D.is_contiguous() and tuple(dt_bias.shape) == (Dm,) and dt_bias.is_contiguous()
    assert tuple(conv_state.shape) == (Bsz, W,
                                       Dm) and conv_state.is_contiguous(), "conv_state must be contiguous [B, W, D]"
    assert ssm_state.is_contiguous(), "ssm_state must be contiguous [B, D, S]"
    assert conv_pos.numel() == 1 and conv_pos.dtype == torch.int64, "conv_pos must be a [1] int64 tensor"


def _launch_ssm_step(x, x_c, z, dt, B, C, A_log, D, dt_bias, conv_state, conv_pos, ssm_state, out, config=None):
    Bsz, Dm, S = ssm_state.shape
    cfg = config or ssm_config(Bsz, ssm_state.dtype, S)
    grid = (triton.cdiv(Dm, cfg["BLOCK_D"]), triton.cdiv(Bsz, cfg["ROWS"]))
    _ssm_step_kernel[grid](
        x, x_c, z, dt, B, C, A_log, D, dt_bias, conv_state, conv_pos, ssm_state, out,
        Bsz, Dm, S, x.stride(0), x_c.stride(0), z.stride(0), dt.stride(0), B.stride(0), C.stride(0),
        WIDTH=conv_state.shape[1], BLOCK_D=cfg["BLOCK_D"], BLOCK_S=triton.next_power_of_2(S), ROWS=cfg["ROWS"],
        COMPUTE=_compute(x_c, dt, ssm_state, A_log), num_warps=cfg["num_warps"])
    return out


def _launch_conv_step(x, conv_state, conv_pos, taps, bias, out, config=None):
    Bsz, W, Dm = conv_state.shape
    cfg = config or conv_config(Bsz)
    grid = (triton.cdiv(Dm, cfg["BLOCK_D"]), triton.cdiv(Bsz, cfg["ROWS"]))
    _conv_step_kernel[grid](
        x, conv_state, conv_pos, taps, bias if bias is not None else taps, out, Bsz, Dm, x.stride(0),
        WIDTH=W, HAS_BIAS=bias is not None, BLOCK_D=cfg["BLOCK_D"], ROWS=cfg["ROWS"],
        COMPUTE=_compute(x, conv_state, taps), num_warps=cfg["num_warps"])
    return out


def _ssm_step_impl(x, x_c, z, dt, B, C, A_log, D, dt_bias, conv_state, conv_pos, ssm_state):
    out = torch.empty(x_c.shape, dtype=x_c.dtype, device=x_c.device)  # [B, D]
    return _launch_ssm_step(x, x_c, z, dt, B, C, A_log, D, dt_bias, conv_state, conv_pos, ssm_state, out)


def _conv_step_impl(x, conv_state, conv_pos, taps, bias):
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)  # [B, D]
    return _launch_conv_step(x, conv_state, conv_pos, taps, bias, out)


def _add_rms_norm_impl(h, delta, weight, eps):
    Bsz, dim = h.shape
    h_new = torch.empty((Bsz, dim), dtype=h.dtype, device=h.device)  # [B, d]
    x = torch.empty((Bsz, dim), dtype=weight.dtype, device=h.device)  # [B, d]
    block = triton.next_power_of_2(dim)
    parts = delta.dim() == 3  # K-split partial sums [s, B, d]
    _add_rms_norm_kernel[(Bsz,)](h, delta, weight, h_new, x, dim, h.stride(0), delta.stride(-2),
                                 delta.stride(0) if parts else 0, eps, PARTS=delta.shape[0] if parts else 1,
                                 BLOCK=block, COMPUTE=_compute(h), num_warps=max(1, min(16, block // 256)))
    return h_new, x


_SSM_ARGS = ("x", "x_c", "z", "dt", "B", "C", "A_log", "D", "dt_bias", "conv_state", "conv_pos", "ssm_state")
kernel_op("mamba_ssm_step", [f"Tensor {n}" for n in _SSM_ARGS], ("conv_state", "ssm_state"), _ssm_step_impl,
          lambda x, x_c, *rest: torch.empty(x_c.shape, dtype=x_c.dtype, device=x_c.device))
kernel_op("mamba_conv_step", ["Tensor x", "Tensor conv_state", "Tensor conv_pos", "Tensor taps", "Tensor? bias"], (),
          _conv_step_impl, lambda x, *rest: torch.empty(x.shape, dtype=x.dtype, device=x.device))
kernel_op("mamba_add_rms_norm", ["Tensor h", "Tensor delta", "Tensor weight", "float eps"], (), _add_rms_norm_impl,
          lambda h, delta, weight, eps: (h.new_empty(h.shape), torch.empty(h.shape, dtype=weight.dtype,
                                                                           device=h.device)),
          returns="(Tensor, Tensor)")


def add_rms_norm(h, delta, weight, eps: float):
    """Residual add + RMSNorm of one row per program; same signature and semantics as naive.add_rms_norm."""
    assert h.dim() == 2 and delta.dim() in (2, 3) and delta.shape[-2:] == h.shape and \
        tuple(weight.shape) == (h.shape[1],), \
        f"add_rms_norm: h {tuple(h.shape)}, delta {tuple(delta.shape)}, weight {tuple(weight.shape)}"
    assert h.stride(1) == 1 and delta.stride(-1) == 1 and weight.is_contiguous(), "add_rms_norm needs contiguous rows"
    return torch.ops.ttt_decode.mamba_add_rms_norm(h, delta, weight, eps)


def ssm_step(x, x_c, z, dt, B, C, A_log, D, dt_bias, conv_state, conv_pos, ssm_state):
    """Fused one-token state update; same signature and semantics as naive.ssm_step."""
    _check_ssm(x, x_c, z, dt, B, C, A_log, D, dt_bias, conv_state, conv_pos, ssm_state)
    return torch.ops.ttt_decode.mamba_ssm_step(x, x_c, z, dt, B, C, A_log, D, dt_bias, conv_state, conv_pos,
                                               ssm_state)


def conv_step(x, conv_state, conv_pos, taps, bias):
    """Conv output for the new input; same signature and semantics as naive.conv_step (taps [W, D])."""
    Bsz, W, Dm = conv_state.shape
    _rows_ok(x, "x", Bsz, Dm)
    assert conv_state.is_contiguous(), "conv_state must be contiguous [B, W, D]"
    assert tuple(taps.shape) == (W, Dm) and taps.is_contiguous(), "conv taps must be contiguous [W, D] (tap-major)"
    assert bias is None or (tuple(bias.shape) == (Dm,) and bias.is_contiguous())
    assert conv_pos.numel() == 1 and conv_pos.dtype == torch.int64, "conv_pos must be a [1] int64 tensor"
    return torch.ops.ttt_decode.mamba_conv_step(x, conv_state, conv_pos, taps, bias)
