"""Micro-benchmark cases of the Mamba decode step (called by bench/micro.py).

    fn, nbytes, flops = micro_case("mamba_step_triton", batch=512, state_dtype=torch.float16, device="cuda")

kernel "mamba_step_triton" times the fused Triton ssm_step (one pass over the state: conv-ring slot
write, dt softplus, state update, output, gating); "mamba_step_ref" the PyTorch reference of the same
step. One call is one layer of `model` (its D, S, W) on random inputs allocated once, activations and
weights in float16 and the state in `state_dtype`. nbytes is the fused kernel's compulsory traffic
(state read + write, x / x_c / z / dt / B / C read, conv slot and output written, A_log / D / dt_bias
read; triton_decode.py) and flops its arithmetic, the same figures for both kernels. The conv output
(conv_step, run before x_proj) is a separate small kernel and not part of a case.
"""

from __future__ import annotations

import torch

from ttt_decode.configs import MambaConfig, get_config
from ttt_decode.errors import UserError
from ttt_decode.ops import mamba as mamba_ops
from ttt_decode.ops.mamba import ssm_step_bytes, ssm_step_flops

KERNELS = {"mamba_step_triton": "triton", "mamba_step_ref": "naive"}
ACT_DTYPE = torch.float16


def make_inputs(cfg: MambaConfig, batch: int, state_dtype: torch.dtype, device, act_dtype=ACT_DTYPE, seed: int = 0):
    """Random inputs of one layer's ssm_step, laid out as the model makes them (x, z views of xz; B, C of
    x_proj's output)."""
    D, S, W, R = cfg.d_inner, cfg.d_state, cfg.d_conv, cfg.dt_rank
    gen = torch.Generator(device=device).manual_seed(seed)

    def rand(*shape, dtype=act_dtype, scale=1.0):
        return (torch.randn(*shape, generator=gen, device=device, dtype=torch.float32) * scale).to(dtype)

    xz = rand(batch, 2 * D)  # [B, 2D]
    dbc = rand(batch, R + 2 * S)  # [B, R + 2S]
    a_log = torch.log(torch.rand(D, S, generator=gen, device=device) * 15 + 1).to(act_dtype)  # [D, S]
    return {
        "x": xz[:, :D], "x_c": rand(batch, D), "z": xz[:, D:], "dt": rand(batch, D, scale=0.5),
        "B": dbc[:, R:R + S], "C": dbc[:, R + S:], "A_log": a_log, "D": rand(D), "dt_bias": rand(D, scale=0.5) - 4.0,
        "conv_state": rand(batch, W, D), "conv_pos": torch.zeros(1, dtype=torch.int64, device=device),
        "ssm_state": rand(batch, D, S, dtype=state_dtype),
    }


def micro_case(kernel: str, batch: int, state_dtype: torch.dtype, device, model: str = "mamba-1.4b"):
    """(fn, bytes, flops): fn() runs one per-layer decode step of `kernel` on inputs allocated once."""
    if kernel not in KERNELS:
        raise UserError(f"unknown Mamba micro kernel {kernel!r}; choose one of {', '.join(KERNELS)}")
    cfg = get_config(model)
    if not isinstance(cfg, MambaConfig):
        raise UserError(f"micro case {kernel!r} needs a Mamba model's shapes, not {model!r}")
    if not isinstance(batch, int) or batch < 1:
        raise UserError(f"batch must be a positive integer, got {batch!r}")
    step = mamba_ops.pick_steps(KERNELS[kernel])[1]
    a = make_inputs(cfg, batch, state_dtype, torch.device(device))
    args = (a["x"], a["x_c"], a["z"], a["dt"], a["B"], a["C"], a["A_log"], a["D"], a["dt_bias"], a["conv_state"],
            a["conv_pos"], a["ssm_state"])

    def fn():
        return step(*args)

    item = torch.empty((), dtype=ACT_DTYPE).element_size()
    nbytes = ssm_step_bytes(batch, cfg.d_inner, cfg.d_state, item, torch.empty((), dtype=state_dtype).element_size(),
                            item)
    return fn, nbytes, ssm_step_flops(batch, cfg.d_inner, cfg.d_state)
