"""TTT-Linear (M1) inner loop, pure PyTorch reference (DESIGN section 4). Any float dtype, float64 too.

Inner model per head: Z = x W1 + b1 (W1 [f,f]). Gradient of token s at the mini-batch start state:
g_s = d/dZ 1/2 ||LN(k_s W1 + b1) - (v_s - k_s)||^2. Output of token t at mini-batch position i:
  Z_t = q_t W1 + b1 - c_i sum_{s<=t} eta_s (q_t . k_s + 1) g_s,   out_t = q_t + LN(Z_t).
At i = b-1: W1 -= c_{b-1} sum_s eta_s k_s^T g_s, b1 -= c_{b-1} sum_s eta_s g_s.

Three entry points with the same arguments:
- `decode_step_dual`  one token; W fixed through the mini-batch, the cache holds (k_s, eta_s g_s).
- `decode_step_primal` one token; the published form, the cache holds the accumulated W_grad.
- `prefill`           any number of tokens: whole mini-batches as matrices, the rest token by token.
All compute in float32 (float64 if an input is float64) and store back in the state/cache dtype. The
decode steps are branch-free on the host (the end-of-mini-batch update is masked by a device value),
so they can be captured in a CUDA graph.
"""

from __future__ import annotations

import torch

from ttt_decode.ops.ttt_common import (
    DualCache,
    PrimalCache,
    TTTState,
    chunked_prefill,
    compute_dtype,
    ln_fused_l2_bwd,
    ln_fwd,
)


def _inner_grad(k, v, W1, b1, gamma, beta):
    """g = dl/dZ at the mini-batch start state. k, v [..., f]; W1 [..., f, F]; returns [..., F]."""
    Z1 = (k.unsqueeze(-2) @ W1).squeeze(-2) + b1
    return ln_fused_l2_bwd(Z1, v - k, gamma, beta)


def _token_grad(q, k, v, eta, gamma, beta, state: TTTState, cache):
    """What both decode forms start from: the compute dtype, b, pos, the token and state in it, and
    the token's scaled gradient eta * g [B,H,F] at the mini-batch start state."""
    acc = compute_dtype(q, state.W1)
    q_, k_, v_ = q.to(acc), k.to(acc), v.to(acc)
    W1, b1 = state.W1.to(acc), state.b1.to(acc)
    gam, bet = gamma.to(acc), beta.to(acc)
    g = _inner_grad(k_, v_, W1, b1, gam, bet) * eta.to(acc).unsqueeze(-1)  # [B,H,F]
    return acc, cache.mini_batch_size, cache.pos, q_, k_, W1, b1, gam, bet, g


def decode_step_dual(q, k, v, eta, c, gamma, beta, state: TTTState, cache: DualCache, advance: bool = True):
    """One token, dual form. q, k, v [B,H,f]; eta [B,H]; c [b]; gamma, beta [H,f] -> out [B,H,f].

    Mutates: cache (row `pos` written, pos advanced unless advance=False) and, at the last position
    of the mini-batch, state.
    """
    acc, b, i, q_, k_, W1, b1, gam, bet, g = _token_grad(q, k, v, eta, gamma, beta, state, cache)
    cache.k.index_copy_(2, i, k.unsqueeze(2).to(cache.k.dtype))
    cache.g1.index_copy_(2, i, g.unsqueeze(2).to(cache.g1.dtype))

    valid = (torch.arange(b, device=q.device) <= i).to(acc)  # [b]
    K = cache.k.to(acc)  # [B,H,b,f]
    G = cache.g1.to(acc) * valid[:, None]  # [B,H,b,F]
    c_i = c.to(acc).index_select(0, i)  # [1]
    attn = (q_.unsqueeze(2) @ K.transpose(-1, -2)) + 1.0  # [B,H,1,b]
    Z = (q_.unsqueeze(2) @ W1).squeeze(2) + b1 - c_i * (attn @ G).squeeze(2)
    out = q_ + ln_fwd(Z, gam, bet)

    # At the end of the mini-batch the state advances; elsewhere the scale is exactly 0.
    scale = (i == b - 1).to(acc) * c.to(acc)[b - 1]
    state.W1.copy_(W1 - scale * (K.transpose(-1, -2) @ G))
    state.b1.copy_(b1 - scale * G.sum(2))
    if advance:
        cache.pos.copy_((i + 1) % b)
    return out.to(q.dtype)


def decode_step_primal(q, k, v, eta, c, gamma, beta, state: TTTState, cache: PrimalCache, advance: bool = True):
    """One token, primal form (W_grad accumulated every token). Same arguments as decode_step_dual.

    Mutates: cache (W1_grad, b1_grad, pos) and, at the last position of the mini-batch, state.
    """
    acc, b, i, q_, k_, W1, b1, gam, bet, g = _token_grad(q, k, v, eta, gamma, beta, state, cache)
    W1_grad = cache.W1_grad.to(acc) + k_.unsqueeze(-1) * g.unsqueeze(-2)  # [B,H,f,F]
    b1_grad = cache.b1_grad.to(acc) + g
    c_i = c.to(acc).index_select(0, i)
    W1_bar = W1 - c_i * W1_grad
    b1_bar = b1 - c_i * b1_grad
    Z = (q_.unsqueeze(2) @ W1_bar).squeeze(2) + b1_bar
    out = q_ + ln_fwd(Z, gam, bet)

    last = i == b - 1
    state.W1.copy_(torch.where(last, W1_bar, W1))
    state.b1.copy_(torch.where(last, b1_bar, b1))
    keep = (~last).to(acc)
    cache.W1_grad.copy_(W1_grad * keep)
    cache.b1_grad.copy_(b1_grad * keep)
    if advance:
        cache.pos.copy_((i + 1) % b)
    return out.to(q.dtype)


def dual_mini_batch(q, k, v, eta, c, gamma, beta, state: TTTState):
    """One whole mini-batch in dual form (matrices). q, k, v [B,H,b,f]; eta [B,H,b] -> out [B,H,b,f].

    Mutates: state (advanced to the next mini-batch's start).
    """
    acc = compute_dtype(q, state.W1)
    q_, k_, v_ = q.to(acc), k.to(acc), v.to(acc)
    W1, b1 = state.W1.to(acc), state.b1.to(acc)
    gam, bet = gamma.to(acc).unsqueeze(1), beta.to(acc).unsqueeze(1)  # [H,1,f]
    c_ = c.to(acc)

    Z1 = k_ @ W1 + b1.unsqueeze(2)  # [B,H,b,F]
    G = ln_fused_l2_bwd(Z1, v_ - k_, gam, bet) * eta.to(acc).unsqueeze(-1)  # eta_s g_s
    attn = torch.tril(q_ @ k_.transpose(-1, -2) + 1.0)  # [B,H,b,b]
    Z = q_ @ W1 + b1.unsqueeze(2) - c_[:, None] * (attn @ G)
    out = q_ + ln_fwd(Z, gam, bet)

    state.W1.copy_(W1 - c_[-1] * (k_.transpose(-1, -2) @ G))
    state.b1.copy_(b1 - c_[-1] * G.sum(2))
    return out.to(q.dtype)


def prefill(q, k, v, eta, c, gamma, beta, state: TTTState, cache=None, advance: bool = True):
    """Any number of tokens. q, k, v [B,H,N,f]; eta [B,H,N] -> out [B,H,N,f]; see ttt_common.chunked_prefill."""
    return chunked_prefill(lambda dual: decode_step_dual if dual else decode_step_primal, dual_mini_batch,
                           q, k, v, eta, c, gamma, beta, state, cache, advance)
