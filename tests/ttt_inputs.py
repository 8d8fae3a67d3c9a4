"""Seeded random inputs for the TTT inner-loop ops (never zeros), shared by the op and kernel tests."""

from dataclasses import dataclass

import torch

from ttt_decode.ops.ttt_common import DualCache, PrimalCache, TTTState, token_coeffs


@dataclass
class TTTCase:
    q: torch.Tensor  # [B,H,N,f]
    k: torch.Tensor
    v: torch.Tensor
    eta: torch.Tensor  # [B,H,N]
    c: torch.Tensor  # [b]
    gamma: torch.Tensor  # [H,f]
    beta: torch.Tensor
    params: tuple  # per-head initial W1 [H,f,F], b1 [H,F] (, W2 [H,F,f], b2 [H,f])

    def state(self, dtype=None, device=None) -> TTTState:
        B = self.q.shape[0]
        st = TTTState.from_params(B, dtype or self.q.dtype, *self.params)
        return TTTState(**{k: t.to(device) for k, t in st.tensors().items()}) if device else st

    def dual_cache(self, state, dtype=None):
        return DualCache.empty_like_state(state, self.c.shape[0], dtype=dtype)

    def primal_cache(self, state, dtype=None):
        return PrimalCache.empty_like_state(state, self.c.shape[0], dtype=dtype)

    def token(self, t):
        return (self.q[:, :, t], self.k[:, :, t], self.v[:, :, t], self.eta[:, :, t], self.c, self.gamma, self.beta)

    def to(self, dtype=None, device=None):
        def cv(x):
            return x.to(device=device, dtype=dtype if x.is_floating_point() and dtype else x.dtype)
        return TTTCase(*(cv(getattr(self, n)) for n in ("q", "k", "v", "eta", "c", "gamma", "beta")),
                       params=tuple(cv(p) for p in self.params))


def make_case(B=2, H=3, f=16, N=40, b=16, mlp=False, seed=0, dtype=torch.float64) -> TTTCase:
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)

    F = 4 * f if mlp else f
    eta = (torch.rand(B, H, N, generator=g, dtype=torch.float64) * 0.5 / f + 0.01 / f).to(dtype)
    c = token_coeffs(r(b, scale=0.05))
    params = (r(H, f, F, scale=f ** -0.5), r(H, F, scale=0.1))
    if mlp:
        params += (r(H, F, f, scale=F ** -0.5), r(H, f, scale=0.1))
    return TTTCase(r(B, H, N, f), r(B, H, N, f), r(B, H, N, f), eta, c, 1.0 + r(H, f, scale=0.1), r(H, f, scale=0.1),
                   params)


def has_pending_row(cache) -> bool:
    """Whether a dual cache's row b-1 of k and g1 is state: TTT-MLP's pending W1 term (ttt_mlp.naive.DEFER_W1)."""
    from ttt_decode.ops.ttt_mlp import naive as m2_naive
    return isinstance(cache, DualCache) and cache.x2 is not None and m2_naive.DEFER_W1


def poison_dual_cache(cache) -> None:
    """NaN in every row a kernel must not read as data (rows at or after pos are stale), except TTT-MLP's
    pending row b-1 of k and g1, which every position reads: zero there, nothing pending."""
    for n, t in cache.tensors().items():
        if n != "pos":
            t.fill_(float("nan"))
    if has_pending_row(cache):
        b = cache.mini_batch_size
        cache.k[:, :, b - 1].zero_()
        cache.g1[:, :, b - 1].zero_()

