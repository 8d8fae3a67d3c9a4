"""Mamba-1 recurrence: the functional op API (DESIGN section 5).

    conv_step(x, conv_state, conv_pos, taps, bias, impl="naive") -> x_c [B, D]
    ssm_step(x, x_c, z, dt, B, C, A_log, D, dt_bias, conv_state, conv_pos, ssm_state, impl="naive") -> y [B, D]
    add_rms_norm(h, delta, weight, eps, impl="naive") -> (h + delta, RMSNorm(h + delta))
    conv_prefill(x, conv_state, conv_pos, weight, bias) -> x_c [B, N, D]
    scan(x_c, z, dt, B, C, A_log, D, dt_bias, ssm_state) -> y [B, N, D]
    advance_(conv_pos, n, width)

Shapes: x, x_c, z, dt [B, D] ([B, N, D] for prefill); B, C [B, S] ([B, N, S]); A_log [D, S]; D, dt_bias [D];
conv weight [D, W] (prefill) and the same tap-major, taps [W, D] (the decode step), bias [D];
conv_state [B, W, D] (a ring, slot conv_pos = oldest input; naive.py);
conv_pos [1] int64; ssm_state [B, D, S]. The steps do not move conv_pos: the caller advances it once
per token for every layer (`advance_`). `impl` picks "naive" (PyTorch, any dtype incl. float64) or
"triton" (triton_decode.py: CUDA, or TRITON_INTERPRET=1 on CPU). Prefill: conv_prefill is PyTorch for
both; the scan is naive.scan (one kernel per token; see naive.py for its cost) or, for "triton", the
one-launch scan of triton_scan.py (`pick_scan`).
"""

from ttt_decode.errors import UserError
from ttt_decode.ops.mamba import naive
from ttt_decode.ops.mamba.naive import advance_, conv_prefill, scan

IMPLS = ("naive", "triton")

__all__ = ["conv_step", "ssm_step", "add_rms_norm", "conv_prefill", "scan", "advance_", "pick", "pick_steps",
           "pick_scan", "naive", "IMPLS", "ssm_step_bytes", "ssm_step_flops", "conv_step_bytes", "conv_step_flops"]


def pick_steps(impl: str):
    """(conv_step, ssm_step) of an implementation, resolved once (a compiled step must not import)."""
    return pick(impl)[:2]


def pick(impl: str):
    """(conv_step, ssm_step, add_rms_norm) of an implementation."""
    if impl == "naive":
        return naive.conv_step, naive.ssm_step, naive.add_rms_norm
    if impl == "triton":
        from ttt_decode.ops.mamba import triton_decode

        return triton_decode.conv_step, triton_decode.ssm_step, triton_decode.add_rms_norm
    raise UserError(f"unknown Mamba op implementation {impl!r}; choose one of {', '.join(IMPLS)}")


def pick_scan(impl: str):
    """The prefill scan of an implementation (same signature as naive.scan)."""
    if impl == "naive":
        return naive.scan
    if impl == "triton":
        from ttt_decode.ops.mamba import triton_scan

        return triton_scan.scan
    raise UserError(f"unknown Mamba op implementation {impl!r}; choose one of {', '.join(IMPLS)}")


def conv_step(x, conv_state, conv_pos, taps, bias, impl="naive"):
    """Conv output for the new input x [B, D] (taps [W, D]: the conv weight tap-major); mutates nothing."""
    return pick_steps(impl)[0](x, conv_state, conv_pos, taps, bias)


def ssm_step(x, x_c, z, dt, B, C, A_log, D, dt_bias, conv_state, conv_pos, ssm_state, impl="naive"):
    """One token of the selective state update; mutates ssm_state and the ring slot conv_pos of conv_state."""
    return pick_steps(impl)[1](x, x_c, z, dt, B, C, A_log, D, dt_bias, conv_state, conv_pos, ssm_state)


def add_rms_norm(h, delta, weight, eps, impl="naive"):
    """Residual add fused with the next RMSNorm: h [B, d] + delta [B, d] -> (h_new, normed x); mutates nothing."""
    return pick(impl)[2](h, delta, weight, eps)


# ---- compulsory traffic and arithmetic of one call (item = bytes per element) ----
def ssm_step_bytes(batch: int, d_inner: int, d_state: int, act_item: int, state_item: int, param_item: int) -> int:
    """Compulsory bytes of one ssm_step call: state read + write, x / x_c / z / dt / B / C read, conv slot
    and y written, A_log / D / dt_bias read (triton_decode.py docstring)."""
    B, D, S = batch, d_inner, d_state
    return (2 * B * D * S * state_item + 4 * B * D * act_item + 2 * B * S * act_item + 2 * B * D * act_item
            + D * (S + 2) * param_item)


def ssm_step_flops(batch: int, d_inner: int, d_state: int) -> int:
    return batch * d_inner * (7 * d_state + 13)


def conv_step_bytes(batch: int, d_inner: int, d_conv: int, act_item: int, param_item: int) -> int:
    return (d_conv + 1) * batch * d_inner * act_item + d_inner * (d_conv + 1) * param_item


def conv_step_flops(batch: int, d_inner: int, d_conv: int) -> int:
    return batch * d_inner * (2 * d_conv + 4)
