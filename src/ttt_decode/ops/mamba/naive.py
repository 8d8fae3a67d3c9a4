"""PyTorch reference of the Mamba-1 recurrence (DESIGN section 5): float64-capable, graph-capturable.

Letters: B batch, D channels (d_inner), S state size (d_state), W conv width (d_conv), N tokens.

Per channel d and state index n, one token:
    x_c   = silu(bias_d + sum_j w_dj * u_{t-W+1+j, d})       depthwise causal conv over the last W inputs u
    dt    = softplus(dt_d + dt_bias_d)                         (linear above 20, as torch's softplus)
    h_dn <- h_dn * exp(dt * A_dn) + dt * B_n * x_c,  A = -exp(A_log)
    y_d   = (sum_n h_dn C_n + D_d x_c) * silu(z_d)

Conv state layout: a ring of the last W inputs, `conv_state [B, W, D]`, slot-major so that one slot is
a contiguous row, with `conv_pos [1]` int64 on the device: slot `conv_pos` holds the oldest input,
slot `(conv_pos + j) % W` the j-th oldest. A decode step reads the W-1 newest slots and overwrites
the oldest with the new input; nothing shifts. The caller advances `conv_pos` (one counter shared by
every layer, `advance_`), so the ops themselves never move it.

Precision: arithmetic in float32 for reduced-precision inputs, float64 if any input is float64. The
output y of a step uses the updated state before it is rounded to the state dtype (as mamba-ssm's
kernel does); the state is stored rounded.

Functions (each mutates only what it says):
    conv_step(x, conv_state, conv_pos, taps, bias) -> x_c [B, D]                        mutates nothing
        taps [W, D]: the conv weight tap-major (the model keeps this copy in its decode state)
    ssm_step(x, x_c, z, dt, B, C, A_log, D, dt_bias, conv_state, conv_pos, ssm_state) -> y [B, D]
        writes x into conv_state's slot conv_pos and advances ssm_state [B, D, S] in place
    add_rms_norm(h, delta, weight, eps) -> (h + delta, RMSNorm(h + delta)) [B, d_model]   mutates nothing
        the residual add of one block fused with the next block's pre-norm (models.common.RMSNorm's
        arithmetic: normalise in the residual dtype, round to the weight dtype, multiply by the weight)
    conv_prefill(x, conv_state, conv_pos, weight, bias) -> x_c [B, N, D]
        leaves conv_state holding the last W inputs for position (conv_pos + N) % W
    scan(x_c, z, dt, B, C, A_log, D, dt_bias, ssm_state) -> y [B, N, D]; advances ssm_state by N tokens

Cost of `scan` (the reference prefill; the Triton one is triton_scan.py): a sequential recurrence over
the N tokens, vectorised over B, D and S, in chunks of tokens sized to bound memory (`_chunk_tokens`): per chunk two
[B, L, D, S] temporaries (exp(dt A) and dt B x), then one fused multiply-add kernel per token on a
[B, D, S] slice, then one batched contraction with C. Work O(B N D S), memory traffic about 6 B N D S
compute-dtype elements, N + O(N / L) kernel launches: correct for any prompt length, but it is a
reference, not a fast prefill (a prompt of 2048 tokens costs ~2048 launches per layer).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ttt_decode.ops.conv_ring import ring_prefill, ring_step
from ttt_decode.ops.split_k import sum_parts

# Elements per [B, L, D, S] temporary in `scan` (each of two): 2^25 float32 = 128 MiB.
SCAN_CHUNK_ELEMENTS = 1 << 25


def compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32


def advance_(conv_pos: torch.Tensor, n: int, width: int) -> None:
    """conv_pos <- (conv_pos + n) % width, in place on the device (no host sync)."""
    conv_pos.copy_((conv_pos + n) % width)


def softplus(dt: torch.Tensor) -> torch.Tensor:
    return F.softplus(dt)


def conv_step(x, conv_state, conv_pos, taps, bias):
    """x [B, D] (new input), conv_state [B, W, D] ring, conv_pos [1] int64, taps [W, D] (the conv weight
    [D, W] transposed), bias [D] or None -> x_c = silu(conv) [B, D] in x's dtype. Reads the W-1 newest
    slots; mutates nothing."""
    cd = compute_dtype(x, conv_state, taps)
    return F.silu(ring_step(x, conv_state, conv_pos, taps.t(), bias, cd)).to(x.dtype)


def ssm_step(x, x_c, z, dt, B, C, A_log, D, dt_bias, conv_state, conv_pos, ssm_state):
    """One token. x, x_c, z, dt [B, D]; B, C [B, S]; A_log [D, S]; D, dt_bias [D];
    conv_state [B, W, D]; conv_pos [1]; ssm_state [B, D, S]. Returns y [B, D] in x_c's dtype.

    Mutates ssm_state (advanced by one token) and conv_state (slot conv_pos <- x)."""
    cd = compute_dtype(x_c, dt, ssm_state, A_log)
    A = -torch.exp(A_log.to(cd))  # [D, S]
    delta = softplus(dt.to(cd) + dt_bias.to(cd))  # [B, D]
    xc = x_c.to(cd)
    h = ssm_state.to(cd) * torch.exp(delta.unsqueeze(-1) * A) + (delta * xc).unsqueeze(-1) * B.to(cd).unsqueeze(1)
    y = (h * C.to(cd).unsqueeze(1)).sum(-1) + D.to(cd) * xc
    zc = z.to(cd)
    y = y * F.silu(zc)
    ssm_state.copy_(h)
    conv_state.index_copy_(1, conv_pos, x.unsqueeze(1).to(conv_state.dtype))
    return y.to(x_c.dtype)


def add_rms_norm(h, delta, weight, eps: float):
    """h [B, d] residual (float32 / float64), delta [B, d] block output (or its K-split partial sums [s, B, d],
    ops.split_k.sum_parts adds them), weight [d] -> (h_new, x):
    h_new = h + delta (in h's dtype), x = weight * (h_new * rsqrt(mean(h_new^2) + eps)).to(weight.dtype)."""
    h_new = h + sum_parts(delta, h.dtype)
    x = h_new * torch.rsqrt(h_new.pow(2).mean(-1, keepdim=True) + eps)
    return h_new, weight * x.to(weight.dtype)


def conv_prefill(x, conv_state, conv_pos, weight, bias):
    """x [B, N, D] -> x_c [B, N, D]: the causal conv continued from the ring, SiLU applied.

    Mutates conv_state so that it holds the last W inputs laid out for position (conv_pos + N) % W."""
    cd = compute_dtype(x, conv_state, weight)
    return F.silu(ring_prefill(x, conv_state, conv_pos, weight, bias, cd)).to(x.dtype)


def _chunk_tokens(Bsz: int, Dm: int, S: int, N: int) -> int:
    return max(1, min(N, SCAN_CHUNK_ELEMENTS // max(1, Bsz * Dm * S)))


def scan(x_c, z, dt, B, C, A_log, D, dt_bias, ssm_state):
    """Selective scan over N tokens, starting from ssm_state [B, D, S] (advanced in place).

    x_c, z, dt [B, N, D]; B, C [B, N, S]; A_log [D, S]; D, dt_bias [D]. Returns y [B, N, D] in x_c's dtype.
    The state is carried in the compute dtype inside the scan and rounded once at the end."""
    Bsz, N, Dm = x_c.shape
    S = A_log.shape[1]
    cd = compute_dtype(x_c, dt, ssm_state, A_log)
    A = -torch.exp(A_log.to(cd))  # [D, S]
    delta = softplus(dt.to(cd) + dt_bias.to(cd))  # [B, N, D]
    xc = x_c.to(cd)
    u = delta * xc  # [B, N, D]
    Bc, Cc = B.to(cd), C.to(cd)
    h = ssm_state.to(cd)
    L = _chunk_tokens(Bsz, Dm, S, N)
    ys = []
    for t0 in range(0, N, L):
        t1 = min(N, t0 + L)
        dA = torch.exp(delta[:, t0:t1, :, None] * A)  # [B, L, D, S]
        H = u[:, t0:t1, :, None] * Bc[:, t0:t1, None, :]  # [B, L, D, S]: dt B x, becomes the states
        H[:, 0].addcmul_(dA[:, 0], h)
        for t in range(1, t1 - t0):
            H[:, t].addcmul_(dA[:, t], H[:, t - 1])
        h = H[:, -1]
        ys.append(torch.einsum("bldn,bln->bld", H, Cc[:, t0:t1]))
    y = torch.cat(ys, dim=1) + D.to(cd) * xc
    y = y * F.silu(z.to(cd))
    ssm_state.copy_(h)
    return y.to(x_c.dtype)
