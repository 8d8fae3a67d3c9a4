"""The TTT block's elementwise decode work around its GEMMs and the inner kernel, in three steps (PyTorch:
the reference of the fused kernels in ttt_block_triton.py, and the model's path where those do not run).

One token of a TTT block (Mamba backbone) is, with p = x @ in_proj = [q0 | v | g | lr]:

    pre_conv_step   h <- h + delta                 delta: the previous block's MLP output (or none)
                    h <- h + Conv(RMSNorm_c(h))    depthwise causal conv over a ring (ops.conv_ring)
                    x  = RMSNorm_s(h)              the TTT layer's input, in the weights' dtype
    (in_proj GEMM)  p  = x @ in_proj
    qk_prep         q  = rotary(conv_q(q0)), k = rotary(conv_k(q0))    [B, H, f]
                    eta = base_lr * sigmoid(lr + lr_bias) / f         [B, H] float32
                    c   = max(0, 1/(i+1) + learnable_token_idx_i)     [b] (token coefficients)

    (inner kernel)  z  = the TTT inner loop's output                 [B, D]
    gate_norm       y  = gelu_tanh(g) * LayerNorm(z)                  the o_proj's input

Both conv steps write the new conv input into slot conv_pos of their ring (the model advances conv_pos
once per token). qk_prep's two convs (different weights) read the same input q0, so they share one
ring. Keeping the previous block's residual add in the next block's first step is what lets the fused
kernel do it without a launch of its own. Rounding follows the model's unfused PyTorch path:
the residual stream in float32 (float64 for float64), norms and conv outputs rounded to the weights'
dtype where the model rounds them.

The conv weights come tap-major, [W, D] (row j: tap j of every channel, row W-1 the newest input's),
a contiguous copy of the parameter [D, W] transposed that the model's decode state keeps
(models.ttt.TTTLayerState.taps): the fused kernels then read each tap as one contiguous row, in
the layout of the rest of the row's data.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ttt_decode.ops.conv_ring import ring_conv_step as conv_step
from ttt_decode.ops.conv_ring import ring_step
from ttt_decode.ops.norms import acc_dtype, rms_norm
from ttt_decode.ops.split_k import sum_parts
from ttt_decode.ops.ttt_common import gelu_tanh, token_coeffs

__all__ = ["apply_rotary", "pre_conv_step", "eta_of", "qk_prep", "gate_norm"]


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs (x[2j], x[2j+1]) by angle j. x [..., N, f]; cos, sin [N, f/2]."""
    pairs = x.unflatten(-1, (-1, 2))  # [..., N, f/2, 2]
    x0, x1 = pairs[..., 0], pairs[..., 1]
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.stack((x0 * cos - x1 * sin, x1 * cos + x0 * sin), dim=-1).flatten(-2)


def pre_conv_step(h, delta, norm_c, ring, conv_pos, conv_taps, conv_b, norm_s, eps: float):
    """h [B, D] residual (float32), delta [B, D], its K-split partial sums [s, B, D] (ops.split_k.sum_parts
    adds them) or None -> (h + delta + Conv(RMSNorm_c(h + delta)), RMSNorm_s of that in the weights' dtype).
    conv_taps [W, D]: the conv's weights tap-major (the parameter [D, W] transposed, contiguous; see the
    module docstring). Mutates ring (slot conv_pos)."""
    if delta is not None:
        h = h + sum_parts(delta, h.dtype)
    y = conv_step(rms_norm(h, norm_c, eps), ring, conv_pos, conv_taps.t(), conv_b)
    h = h + y.to(h.dtype)
    return h, rms_norm(h, norm_s, eps)


def eta_of(lr, lr_bias, base_lr: float, head_dim: int) -> torch.Tensor:
    """lr [B, ..., H] (the projection's lr columns) -> the inner step's learning rate, float32 (float64)."""
    acc = acc_dtype(lr.dtype)
    return base_lr * torch.sigmoid(lr.to(acc) + lr_bias.to(acc)) / head_dim


def qk_prep(p, ring, conv_pos, wq, bq, wk, bk, rope_cos, rope_sin, pos, lr_bias, token_idx,
            base_lr: float, num_heads: int, lr_col: int):
    """p [B, >= lr_col + H] = [q0 | v | (g) | lr] -> (q, k [B, H, f] in p's dtype, eta [B, H], c [b]).

    q0 is p[:, :D] (q and k share it), lr is p[:, lr_col:lr_col + H].

    rope_cos, rope_sin [b, f/2]: the rotary factors of the b mini-batch positions; pos [1] int64 the
    current one. wq, wk [W, D]: the convs' weights tap-major. ring [B, W, D]: the last W values of q0,
    read by both convs. Mutates ring (q0 into slot
    conv_pos, after both convs have read the old slots)."""
    B = p.shape[0]
    H = num_heads
    D = ring.shape[2]
    f = D // H
    q0, lr = p[:, :D], p[:, lr_col:lr_col + H]
    cd = acc_dtype(q0.dtype)
    q = ring_step(q0, ring, conv_pos, wq.t(), bq, cd).to(q0.dtype)
    k = ring_step(q0, ring, conv_pos, wk.t(), bk, cd).to(q0.dtype)
    ring.index_copy_(1, conv_pos, q0.unsqueeze(1).to(ring.dtype))  # once both convs have read the old slots
    cos, sin = rope_cos.index_select(0, pos), rope_sin.index_select(0, pos)  # [1, f/2]
    q = apply_rotary(q.view(B, H, 1, f), cos, sin).squeeze(2)
    k = apply_rotary(k.view(B, H, 1, f), cos, sin).squeeze(2)
    return q, k, eta_of(lr, lr_bias, base_lr, f), token_coeffs(token_idx)


def gate_norm(z, g, weight, bias, eps: float):
    """z [B, D] the inner loop's output (heads flattened), g [B, D] the gate columns of the projection or
    None -> gelu_tanh(g) * LayerNorm(z) in z's dtype (the o_proj's input); weight, bias [D] the post-norm's."""
    y = F.layer_norm(z, (z.shape[-1],), weight, bias, eps)
    return y if g is None else gelu_tanh(g) * y
