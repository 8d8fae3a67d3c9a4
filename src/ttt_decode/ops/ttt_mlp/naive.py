"""TTT-MLP (M2) inner loop, pure PyTorch reference (DESIGN section 4). Any float dtype, float64 too.

Inner model per head: Z = gelu(x W1 + b1) W2 + b2, W1 [f,F], W2 [F,f], F = 4f, gelu = tanh approx.
Gradients of token s at the mini-batch start state:
  Z1_s = k_s W1 + b1, X2_s = gelu(Z1_s), g2_s = d/dZ2 1/2 ||LN(X2_s W2 + b2) - (v_s - k_s)||^2,
  g1_s = (g2_s W2^T) * gelu'(Z1_s).
Output of token t at mini-batch position i:
  Z1' = q_t W1 + b1 - c_i sum_{s<=t} eta_s (q_t . k_s + 1) g1_s;  X2' = gelu(Z1')
  Z   = X2' W2 + b2 - c_i sum_{s<=t} eta_s (X2' . X2_s + 1) g2_s; out_t = q_t + LN(Z).
At i = b-1: W1 -= c_{b-1} sum eta_s k_s^T g1_s, W2 -= c_{b-1} sum eta_s X2_s^T g2_s, biases likewise.

Deferred W1 update (DEFER_W1, TTT_DECODE_M2_DEFER_W1=1; off by default: on an H100 the kernel built for it ran
its ordinary positions 2-6% slower, which outweighed its 12% faster last position; DESIGN section 9.8): the last
token's rank-1 term of W1's update, c_{b-1} k_{b-1}^T G1_{b-1}, is not applied at i = b-1 but held as cache
row b-1 (k, g1) and applied at the end of the next mini-batch, so that the state W1 in memory is
    W1 (the inner model's) = state.W1 - c_{b-1} k_c^T G1_c,   k_c, G1_c = cache.k, cache.g1 at row b-1
(a zero row: nothing pending). Why: G1_{b-1} exists only after the whole of W2 has been read, which in the
kernel comes after W1's one read; applying it then needs W1 read again (a second DRAM walk of 32 KB an
item at ttt-1b). Deferred, the update at i = b-1 uses the rows as stored before this token's (rows < b-1
of this mini-batch, row b-1 the pending one) and fits in the kernel's one W1 walk; rows <= i of every
position are read as before, and Z1 of k and q subtracts the pending term. b1, W2, b2 stay current.
`settle_w1` applies the pending term (chunked prefill before its whole mini-batches, tests).

Entry points and conventions as in ttt_linear/naive.py.
"""

from __future__ import annotations

import os

import torch

from ttt_decode.errors import UserError
from ttt_decode.ops.ttt_common import (
    DualCache,
    PrimalCache,
    TTTState,
    chunked_prefill,
    compute_dtype,
    gelu_tanh,
    gelu_tanh_bwd,
    ln_fused_l2_bwd,
    ln_fwd,
)

# The decode steps' convention for M2 dual caches (the Triton kernel and this reference read it at each call;
# tests set it). TTT_DECODE_M2_DEFER_W1=1 selects the deferred W1 term (off by default: measured slower).
ENV_DEFER_W1 = "TTT_DECODE_M2_DEFER_W1"


def _read_switch(name: str, default: str) -> tuple[bool, str | None]:
    """(value, problem): a 0/1 switch from the environment; anything else is the default and a problem that
    check_convention reports (raising here, at import, would be a traceback before any command runs)."""
    value = os.environ.get(name, default)
    if value in ("0", "1"):
        return value == "1", None
    return default == "1", (f"{name}={value!r} is not 0 or 1 (1: TTT-MLP's decode defers the last token's W1 term, "
                            f"0: it keeps W1 current, the kernel as before; unset it for the default, {default})")


DEFER_W1, DEFER_W1_PROBLEM = _read_switch(ENV_DEFER_W1, "0")


def check_convention() -> None:
    """A one-line error where TTT_DECODE_M2_DEFER_W1 has a value that is not 0 or 1 (checked by the decode steps
    and by TTTLM before anything is allocated)."""
    if DEFER_W1_PROBLEM:
        raise UserError(DEFER_W1_PROBLEM)


def _inner_grads(k, v, W1, b1, W2, b2, gamma, beta, z1_less=0.0):
    """(X2, g1, g2) of tokens k, v [..., N, f] at the mini-batch start state W1 [..., f, F] etc.; z1_less: a term
    taken off k W1 + b1 (the pending W1 term's share, decode_step_dual)."""
    Z1 = k @ W1 + b1.unsqueeze(-2) - z1_less  # [..., N, F]
    X2 = gelu_tanh(Z1)
    Z2 = X2 @ W2 + b2.unsqueeze(-2)  # [..., N, f]
    g2 = ln_fused_l2_bwd(Z2, v - k, gamma, beta)
    g1 = (g2 @ W2.transpose(-1, -2)) * gelu_tanh_bwd(Z1)
    return X2, g1, g2


def _load(state: TTTState, acc):
    return state.W1.to(acc), state.b1.to(acc), state.W2.to(acc), state.b2.to(acc)


def decode_step_dual(q, k, v, eta, c, gamma, beta, state: TTTState, cache: DualCache, advance: bool = True):
    """One token, dual form. q, k, v [B,H,f]; eta [B,H]; c [b]; gamma, beta [H,f] -> out [B,H,f].

    Mutates: cache (row `pos` of k, g1, x2, g2; pos advanced unless advance=False) and, at the last
    position of the mini-batch, state. With DEFER_W1, row b-1 of k and g1 is the pending term of W1
    (module docstring) and state.W1 is the inner model's W1 only after `settle_w1`.
    """
    check_convention()
    acc = compute_dtype(q, state.W1)
    b = cache.mini_batch_size
    i = cache.pos
    q_, k_, v_ = q.to(acc).unsqueeze(2), k.to(acc).unsqueeze(2), v.to(acc).unsqueeze(2)  # [B,H,1,f]
    W1s, b1, W2, b2 = _load(state, acc)
    gam, bet = gamma.to(acc).unsqueeze(1), beta.to(acc).unsqueeze(1)  # [H,1,f]
    e = eta.to(acc)[..., None, None]  # [B,H,1,1]
    c_last = c.to(acc)[b - 1]
    if DEFER_W1:
        # The pending row (k_c, G1_c), read before this token's row can replace it (at i = b-1): the inner
        # model's x W1 is x W1s - c_{b-1} (x . k_c) G1_c, taken off the products as the kernel does.
        k_c, g_c = cache.k[:, :, b - 1:].to(acc), cache.g1[:, :, b - 1:].to(acc)  # [B,H,1,f], [B,H,1,F]
        k_less, q_less = ((c_last * (x @ k_c.transpose(-1, -2))) @ g_c for x in (k_, q_))  # [B,H,1,F]
    else:
        k_less = q_less = 0.0

    X2, g1, g2 = _inner_grads(k_, v_, W1s, b1, W2, b2, gam, bet, k_less)
    if DEFER_W1:
        old_k, old_g1 = cache.k.to(acc, copy=True), cache.g1.to(acc, copy=True)  # as stored before this token's row
    for buf, row in ((cache.k, k_), (cache.g1, g1 * e), (cache.x2, X2), (cache.g2, g2 * e)):
        buf.index_copy_(2, i, row.to(buf.dtype))

    valid = (torch.arange(b, device=q.device) <= i).to(acc)[:, None]  # [b,1]
    K, G1 = cache.k.to(acc), cache.g1.to(acc) * valid  # [B,H,b,f], [B,H,b,F]
    X2s, G2 = cache.x2.to(acc), cache.g2.to(acc) * valid  # [B,H,b,F], [B,H,b,f]
    c_i = c.to(acc).index_select(0, i)

    Z1 = q_ @ W1s + b1.unsqueeze(2) - q_less - c_i * ((q_ @ K.transpose(-1, -2) + 1.0) @ G1)  # [B,H,1,F]
    X2q = gelu_tanh(Z1)
    Z2 = X2q @ W2 + b2.unsqueeze(2) - c_i * ((X2q @ X2s.transpose(-1, -2) + 1.0) @ G2)  # [B,H,1,f]
    out = (q_ + ln_fwd(Z2, gam, bet)).squeeze(2)

    # At the end of the mini-batch the state advances; elsewhere the scale is exactly 0.
    scale = (i == b - 1).to(acc) * c_last
    if DEFER_W1:
        # The rows as stored before this token's: rows < b-1 of this mini-batch and the pending row b-1
        # (i = b-1 here wherever scale is not 0); this token's row is the next pending one.
        state.W1.copy_(W1s - scale * (old_k.transpose(-1, -2) @ old_g1))
    else:
        state.W1.copy_(W1s - scale * (K.transpose(-1, -2) @ G1))
    state.b1.copy_(b1 - scale * G1.sum(2))
    state.W2.copy_(W2 - scale * (X2s.transpose(-1, -2) @ G2))
    state.b2.copy_(b2 - scale * G2.sum(2))
    if advance:
        cache.pos.copy_((i + 1) % b)
    return out.to(q.dtype)


def settle_w1(state: TTTState, cache: DualCache, c) -> None:
    """Apply the pending term of W1's update (DEFER_W1: cache row b-1 of k and g1, coefficient c_{b-1}) to
    state.W1 and zero that row: state.W1 is then the inner model's W1 and the cache holds nothing pending.
    Without DEFER_W1 the row is never pending and nothing changes."""
    if not DEFER_W1:
        return
    b = cache.mini_batch_size
    acc = compute_dtype(state.W1, cache.k)
    k_c, g_c = cache.k[:, :, b - 1:].to(acc), cache.g1[:, :, b - 1:].to(acc)  # [B,H,1,f], [B,H,1,F]
    state.W1.copy_(state.W1.to(acc) - c.to(acc)[b - 1] * (k_c.transpose(-1, -2) @ g_c))
    cache.k[:, :, b - 1].zero_()
    cache.g1[:, :, b - 1].zero_()


def decode_step_primal(q, k, v, eta, c, gamma, beta, state: TTTState, cache: PrimalCache, advance: bool = True):
    """One token, primal form (W_grad accumulated every token). Same arguments as decode_step_dual.

    Mutates: cache (W1_grad, b1_grad, W2_grad, b2_grad, pos) and, at the mini-batch end, state.
    """
    acc = compute_dtype(q, state.W1)
    b = cache.mini_batch_size
    i = cache.pos
    q_, k_, v_ = q.to(acc).unsqueeze(2), k.to(acc).unsqueeze(2), v.to(acc).unsqueeze(2)  # [B,H,1,f]
    W1, b1, W2, b2 = _load(state, acc)
    gam, bet = gamma.to(acc).unsqueeze(1), beta.to(acc).unsqueeze(1)
    e = eta.to(acc)[..., None, None]

    X2, g1, g2 = _inner_grads(k_, v_, W1, b1, W2, b2, gam, bet)
    g1, g2 = g1 * e, g2 * e
    grads = {
        "W1": cache.W1_grad.to(acc) + k_.transpose(-1, -2) @ g1,  # [B,H,f,F]
        "b1": cache.b1_grad.to(acc) + g1.squeeze(2),
        "W2": cache.W2_grad.to(acc) + X2.transpose(-1, -2) @ g2,  # [B,H,F,f]
        "b2": cache.b2_grad.to(acc) + g2.squeeze(2),
    }
    c_i = c.to(acc).index_select(0, i)
    bar = {"W1": W1 - c_i * grads["W1"], "b1": b1 - c_i * grads["b1"],
           "W2": W2 - c_i * grads["W2"], "b2": b2 - c_i * grads["b2"]}
    X2q = gelu_tanh(q_ @ bar["W1"] + bar["b1"].unsqueeze(2))
    Z2 = X2q @ bar["W2"] + bar["b2"].unsqueeze(2)
    out = (q_ + ln_fwd(Z2, gam, bet)).squeeze(2)

    last = i == b - 1
    keep = (~last).to(acc)
    for name, w in zip(("W1", "b1", "W2", "b2"), (W1, b1, W2, b2)):
        getattr(state, name).copy_(torch.where(last, bar[name], w))
        getattr(cache, f"{name}_grad").copy_(grads[name] * keep)
    if advance:
        cache.pos.copy_((i + 1) % b)
    return out.to(q.dtype)


def dual_mini_batch(q, k, v, eta, c, gamma, beta, state: TTTState):
    """One whole mini-batch in dual form (matrices). q, k, v [B,H,b,f]; eta [B,H,b] -> out [B,H,b,f].

    Mutates: state (advanced to the next mini-batch's start).
    """
    acc = compute_dtype(q, state.W1)
    q_, k_, v_ = q.to(acc), k.to(acc), v.to(acc)
    W1, b1, W2, b2 = _load(state, acc)
    gam, bet = gamma.to(acc).unsqueeze(1), beta.to(acc).unsqueeze(1)
    c_ = c.to(acc)
    e = eta.to(acc).unsqueeze(-1)  # [B,H,b,1]

    X2, g1, g2 = _inner_grads(k_, v_, W1, b1, W2, b2, gam, bet)
    G1, G2 = g1 * e, g2 * e
    Z1 = q_ @ W1 + b1.unsqueeze(2) - c_[:, None] * (torch.tril(q_ @ k_.transpose(-1, -2) + 1.0) @ G1)
    X2q = gelu_tanh(Z1)
    Z2 = X2q @ W2 + b2.unsqueeze(2) - c_[:, None] * (torch.tril(X2q @ X2.transpose(-1, -2) + 1.0) @ G2)
    out = q_ + ln_fwd(Z2, gam, bet)

    state.W1.copy_(W1 - c_[-1] * (k_.transpose(-1, -2) @ G1))
    state.b1.copy_(b1 - c_[-1] * G1.sum(2))
    state.W2.copy_(W2 - c_[-1] * (X2.transpose(-1, -2) @ G2))
    state.b2.copy_(b2 - c_[-1] * G2.sum(2))
    return out.to(q.dtype)


def prefill(q, k, v, eta, c, gamma, beta, state: TTTState, cache=None, advance: bool = True):
    """Any number of tokens. q, k, v [B,H,N,f]; eta [B,H,N] -> out [B,H,N,f]; see ttt_common.chunked_prefill."""
    return chunked_prefill(lambda dual: decode_step_dual if dual else decode_step_primal, dual_mini_batch,
                           q, k, v, eta, c, gamma, beta, state, cache, advance, settle_w1)
