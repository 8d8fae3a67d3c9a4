"""Depthwise causal convolution over a ring buffer of the last W inputs (PyTorch; the reference of the
Mamba conv kernels and the TTT model's q/k and pre-convolutions; the q and k convs share one ring).

Layout (docs/DESIGN.md section 10): conv_state [B, W, D], one slot per input, channels contiguous;
conv_pos [1] int64 on the device is the slot of the oldest input, the one the next token overwrites.
Writing one slot per token replaces shifting the whole window (a copy of the state every token), and
the position lives on the device, so one CUDA graph serves every step.
weight [D, W]: tap W-1 multiplies the newest input.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ttt_decode.ops.norms import acc_dtype


def ring_step(x, conv_state, conv_pos, weight, bias, cd: torch.dtype):
    """x [B, D] (the new input) -> the convolution over it and the W-1 newest slots, [B, D] in cd.

    Mutates nothing: the caller writes x into slot conv_pos (a fused kernel may do it in passing)."""
    W = conv_state.shape[1]
    slots = (conv_pos + 1 + torch.arange(W - 1, device=x.device)) % W  # oldest of the W-1 first
    taps = conv_state.index_select(1, slots).to(cd)  # [B, W-1, D]
    w = weight.to(cd)
    acc = x.to(cd) * w[:, W - 1]
    if bias is not None:
        acc = acc + bias.to(cd)
    return acc + (taps * w[:, : W - 1].t().unsqueeze(0)).sum(1)


def ring_conv_step(x, conv_state, conv_pos, weight, bias) -> torch.Tensor:
    """x [B, D] -> ring_step's convolution in x's dtype (accumulated in float32, float64 for float64),
    and x written into slot conv_pos of conv_state: one token of a causal conv, as the models run it."""
    y = ring_step(x, conv_state, conv_pos, weight, bias, acc_dtype(x.dtype))
    conv_state.index_copy_(1, conv_pos, x.unsqueeze(1).to(conv_state.dtype))
    return y.to(x.dtype)


def ring_prefill(x, conv_state, conv_pos, weight, bias, cd: torch.dtype, update: bool = True):
    """x [B, N, D] -> the causal convolution continued from the ring, [B, N, D] in cd.

    With update, mutates conv_state so that it holds the last W inputs laid out for position
    (conv_pos + N) % W (the caller advances conv_pos). Without, mutates nothing: for a second conv of
    the same input over the same ring (the TTT layer's k conv), run before the one that updates it."""
    Dm = x.shape[2]
    W = conv_state.shape[1]
    ar = torch.arange(W, device=x.device)
    hist = conv_state.index_select(1, (conv_pos + ar) % W)  # [B, W, D], oldest first
    full = torch.cat([hist.to(x.dtype), x], dim=1)  # [B, W + N, D]
    inp = full[:, 1:].to(cd).transpose(1, 2)  # [B, D, W - 1 + N]
    y = F.conv1d(inp, weight.to(cd).unsqueeze(1), None if bias is None else bias.to(cd), groups=Dm)  # [B, D, N]
    if update:
        new_pos = (conv_pos + x.shape[1]) % W
        conv_state.index_copy_(1, (new_pos + ar) % W, full[:, -W:].to(conv_state.dtype))
    return y.transpose(1, 2)
