"""Pieces shared by the TTT-Linear and TTT-MLP inner loops (DESIGN section 4).

- the inner LayerNorm and its backward fused with the L2 reconstruction loss,
- gelu (tanh approximation) and its derivative,
- the TTT state (fast weights at the start of the current mini-batch) and the two per-form caches:
  `DualCache` (the mini-batch's vectors, dual form) and `PrimalCache` (accumulated gradients,
  the published primal form). Both hold the position inside the mini-batch as a device tensor.
  The two forms and why they agree: DESIGN section 9; shapes and who mutates what: DESIGN section 10.

Letters: B batch, H heads, f head dim, F inner hidden (f for M1, 4f for M2), b mini-batch, N tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch

from ttt_decode.errors import UserError
from ttt_decode.ops.ttt_prefill_graph import run_whole_mini_batches

TTT_NORM_EPS = 1e-6
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """float64 if any input is float64, else float32: reduced-precision inputs accumulate in fp32."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def ln_fwd(x, gamma, beta, eps=TTT_NORM_EPS):
    """LayerNorm over the last dim with per-head affine parameters (biased variance, as ttt.py)."""
    mu = x.mean(dim=-1, keepdim=True)
    var = x.var(dim=-1, keepdim=True, unbiased=False)
    return gamma * ((x - mu) / torch.sqrt(var + eps)) + beta


def ln_fused_l2_bwd(x, target, gamma, beta, eps=TTT_NORM_EPS):
    """d/dx of 1/2 ||LN(x) - target||^2, the inner loop's gradient at its output."""
    d = x.shape[-1]
    mu = x.mean(dim=-1, keepdim=True)
    var = x.var(dim=-1, keepdim=True, unbiased=False)
    std = torch.sqrt(var + eps)
    x_hat = (x - mu) / std
    grad_x_hat = (gamma * x_hat + beta - target) * gamma
    return (d * grad_x_hat - grad_x_hat.sum(-1, keepdim=True)
            - x_hat * (grad_x_hat * x_hat).sum(-1, keepdim=True)) / (d * std)


def gelu_tanh(x):
    return 0.5 * x * (1.0 + torch.tanh(_SQRT_2_OVER_PI * (x + 0.044715 * x * x * x)))


def gelu_tanh_bwd(x):
    """Derivative of gelu_tanh."""
    t = torch.tanh(_SQRT_2_OVER_PI * (x + 0.044715 * x * x * x))
    return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * _SQRT_2_OVER_PI * (1.0 + 3 * 0.044715 * x * x)


def token_coeffs(learnable_token_idx: torch.Tensor) -> torch.Tensor:
    """c_i = max(0, 1/(i+1) + learnable_i) for i in [0, b): the per-position scale of the inner step."""
    b = learnable_token_idx.shape[0]
    base = 1.0 / torch.arange(1, b + 1, dtype=torch.float32, device=learnable_token_idx.device)
    return torch.clamp_min(base.to(learnable_token_idx.dtype) + learnable_token_idx, 0.0)


class _Tensors:
    """Helpers for dataclasses whose fields are tensors or None."""

    def tensors(self) -> dict[str, torch.Tensor]:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors().values())

    def clone(self):
        return type(self)(**{f.name: (None if getattr(self, f.name) is None else getattr(self, f.name).clone())
                             for f in fields(self)})

    def copy_(self, other) -> None:
        for name, t in self.tensors().items():
            t.copy_(getattr(other, name))


@dataclass
class TTTState(_Tensors):
    """Fast weights at the start of the current mini-batch, one copy per sequence.

    M1: W1 [B,H,f,f], b1 [B,H,f]. M2: W1 [B,H,f,F], b1 [B,H,F], W2 [B,H,F,f], b2 [B,H,f].
    """

    W1: torch.Tensor
    b1: torch.Tensor
    W2: torch.Tensor | None = None
    b2: torch.Tensor | None = None

    @property
    def is_mlp(self) -> bool:
        return self.W2 is not None

    @classmethod
    def from_params(cls, batch: int, dtype: torch.dtype, W1, b1, W2=None, b2=None) -> "TTTState":
        """Tile per-head initial weights (W1 [H,f,F], b1 [H,F], ...) over the batch."""
        def tile(p):
            return None if p is None else p.detach().to(dtype).unsqueeze(0).repeat(batch, *([1] * p.dim()))
        return cls(tile(W1), tile(b1), tile(W2), tile(b2))


@dataclass
class DualCache(_Tensors):
    """The current mini-batch's vectors (dual form); rows at positions > pos are stale and ignored.

    pos [1] int64: position of the next token inside the mini-batch (0..b-1), on the device.
    k [B,H,b,f]: keys. g1 [B,H,b,F]: eta_s * dl/dZ1_s. M2 also x2 [B,H,b,F] (gelu(Z1_s)) and
    g2 [B,H,b,f]: eta_s * dl/dZ2_s.
    """

    pos: torch.Tensor
    k: torch.Tensor
    g1: torch.Tensor
    x2: torch.Tensor | None = None
    g2: torch.Tensor | None = None

    @classmethod
    def empty_like_state(cls, state: TTTState, mini_batch_size: int, pos: torch.Tensor | None = None,
                         dtype: torch.dtype | None = None) -> "DualCache":
        B, H, f, F = state.W1.shape
        kw = dict(dtype=dtype or state.W1.dtype, device=state.W1.device)
        b = mini_batch_size
        if pos is None:
            pos = torch.zeros(1, dtype=torch.int64, device=state.W1.device)
        # Zeros, not empty: masked-out rows are multiplied by 0 in the reference, and 0 * NaN = NaN.
        return cls(pos, torch.zeros(B, H, b, f, **kw), torch.zeros(B, H, b, F, **kw),
                   torch.zeros(B, H, b, F, **kw) if state.is_mlp else None,
                   torch.zeros(B, H, b, f, **kw) if state.is_mlp else None)

    @property
    def mini_batch_size(self) -> int:
        return self.k.shape[2]


@dataclass
class PrimalCache(_Tensors):
    """Gradients accumulated over the current mini-batch (primal form, the published kernels' way).

    pos [1] int64 as in DualCache; W1_grad, b1_grad (and W2_grad, b2_grad) shaped like the state.
    """

    pos: torch.Tensor
    W1_grad: torch.Tensor
    b1_grad: torch.Tensor
    W2_grad: torch.Tensor | None = None
    b2_grad: torch.Tensor | None = None
    mini_batch_size: int = 16

    def tensors(self):
        t = super().tensors()
        t.pop("mini_batch_size")
        return t

    def clone(self):
        return PrimalCache(**{k: v.clone() for k, v in self.tensors().items()}, mini_batch_size=self.mini_batch_size)

    @classmethod
    def empty_like_state(cls, state: TTTState, mini_batch_size: int, pos: torch.Tensor | None = None,
                         dtype: torch.dtype | None = None) -> "PrimalCache":
        if pos is None:
            pos = torch.zeros(1, dtype=torch.int64, device=state.W1.device)
        z = {k: torch.zeros_like(v, dtype=dtype or v.dtype) for k, v in state.tensors().items()}
        return cls(pos, z["W1"], z["b1"], z.get("W2"), z.get("b2"), mini_batch_size=mini_batch_size)


def check_decode_inputs(q, k, v, eta, c, gamma, beta, state: TTTState, cache, mlp: bool) -> None:
    """Shape checks at the op boundary, so a wrong call fails with a message and not deep inside."""
    if q.dim() != 3 or k.shape != q.shape or v.shape != q.shape:
        raise UserError(f"decode_step: q, k, v must be [B,H,f] and equal, got {tuple(q.shape)}, "
                        f"{tuple(k.shape)}, {tuple(v.shape)}")
    B, H, f = q.shape
    if eta.shape != (B, H):
        raise UserError(f"decode_step: eta must be [B,H]={B, H}, got {tuple(eta.shape)}")
    if gamma.shape != (H, f) or beta.shape != (H, f):
        raise UserError(f"decode_step: gamma/beta must be [H,f]={H, f}")
    if state.is_mlp != mlp:
        raise UserError("decode_step: state kind does not match the op (TTT-Linear needs W1,b1; TTT-MLP W1,b1,W2,b2)")
    if state.W1.shape[:3] != (B, H, f):
        raise UserError(f"decode_step: state W1 {tuple(state.W1.shape)} does not match q {tuple(q.shape)}")
    if c.shape != (cache.mini_batch_size,):
        raise UserError(f"decode_step: c must have one entry per mini-batch position ({cache.mini_batch_size})")


def chunked_prefill(step_for, dual_mini_batch, q, k, v, eta, c, gamma, beta,
                    state: TTTState, cache=None, advance: bool = True, settle=None):
    """Prefill of any number of tokens. q, k, v [B,H,N,f]; eta [B,H,N] -> out [B,H,N,f].

    `step_for(dual: bool)` gives the decode step of the dual or primal form. Tokens up to the next
    mini-batch boundary and the remainder after the last whole mini-batch go through the decode step
    of the cache's form (DualCache or PrimalCache); whole mini-batches go through `dual_mini_batch`
    (matrices; on a GPU inside `prefill_graphs()`, replayed from one CUDA graph), which start from the
    state alone: `settle(state, cache, c)`, if given, first applies what a dual cache still holds of the
    state (TTT-MLP's deferred W1 term, ttt_mlp.naive.settle_w1). Without a cache a
    temporary dual cache is used (the state after the last whole mini-batch is kept, a trailing
    partial mini-batch is dropped). Mutates state and cache; the position ends at (start + N) mod b,
    or stays at start if advance=False.
    """
    b = c.shape[0]
    N = q.shape[2]
    if cache is None:
        cache = DualCache.empty_like_state(state, b)
    step = step_for(isinstance(cache, DualCache))
    # Host read of the position: prefill is outside the graph-captured decode step.
    start = int(cache.pos.item())
    out = torch.empty_like(q)

    def one(t):
        out[:, :, t] = step(q[:, :, t], k[:, :, t], v[:, :, t], eta[:, :, t], c, gamma, beta, state, cache)

    t = 0
    while t < N and (start + t) % b:
        one(t)
        t += 1
    whole = (N - t) // b
    if whole:
        if settle is not None and isinstance(cache, DualCache):
            settle(state, cache, c)
        # From one CUDA graph inside a prefill_graphs() context on a GPU, else eagerly (ttt_prefill_graph.py).
        run_whole_mini_batches(dual_mini_batch, q, k, v, eta, c, gamma, beta, state, out, t, whole)
        t += whole * b
    while t < N:
        one(t)
        t += 1
    cache.pos.fill_((start + N) % b if advance else start)
    return out


@dataclass
class GateNorm:
    """ops.ttt_block.gate_norm's parameters, for a fused dual step that applies it to its output rows
    (`decode_step_dual_qk(..., gate_norm=)`, which then returns o_proj's input y [B, H f]): in its kernel where
    the dispatcher folds it (GATE_NORM in dual_config), else by gate_norm's kernel right after.

    weight, bias [H f]: the post-norm's; eps its epsilon; g_col: the first of the gate's H f columns in the
    projection p the step reads, or -1 for no gate; counters: int32 zeros, at least one per sequence,
    counting the heads finished of each row during a call (back to zero when it returns; one tensor can
    serve every layer, as their calls never overlap)."""

    weight: torch.Tensor
    bias: torch.Tensor
    eps: float
    g_col: int
    counters: torch.Tensor

    def check(self, name: str, p: torch.Tensor, dim: int) -> None:
        """What the kernel needs of these for a projection p [B, >= ...] and rows of dim = H f columns."""
        B = p.shape[0]
        assert self.weight.shape == self.bias.shape == (dim,) and self.weight.is_contiguous() \
            and self.bias.is_contiguous(), f"{name}: post-norm weight and bias must be contiguous [{dim}]"
        assert self.g_col == -1 or 0 <= self.g_col <= p.shape[1] - dim, \
            f"{name}: gate columns {self.g_col}..{self.g_col + dim} are not inside p [{B}, {p.shape[1]}]"
        c = self.counters
        assert c.dtype == torch.int32 and c.dim() == 1 and c.numel() >= B and c.is_contiguous() \
            and c.device == p.device, f"{name}: counters must be int32 [>= {B}] on {p.device}"


def pick_step(module_name: str, impl: str, dual: bool):
    """The decode-step function of an op package (`ttt_linear` / `ttt_mlp`) for impl and form.

    naive -> <pkg>.naive; triton -> <pkg>.triton_decode (dual) or <pkg>.triton_primal (primal).
    """
    import importlib

    if impl not in ("naive", "triton"):
        raise UserError(f"unknown implementation {impl!r}; choose 'naive' or 'triton'")
    if impl == "naive":
        mod = importlib.import_module(f"{module_name}.naive")
    else:
        mod = importlib.import_module(f"{module_name}.{'triton_decode' if dual else 'triton_primal'}")
    return getattr(mod, "decode_step_dual" if dual else "decode_step_primal")


def pick_step_qk(module_name: str, impl: str, dual: bool):
    """The decode step of an op package that does ops.ttt_block.qk_prep's work in its kernel's prologue
    (`decode_step_dual_qk`: qk_prep's arguments, then the step's without q, k, eta, c), or None where
    there is none: the Triton dual kernels have it; the naive steps and the primal kernels run
    qk_prep first."""
    import importlib

    if impl != "triton" or not dual:
        return None
    return getattr(importlib.import_module(f"{module_name}.triton_decode"), "decode_step_dual_qk", None)


def inner_step_cost(mlp: bool, form: str, heads: int, head_dim: int, mini_batch_size: int,
                    state_itemsize: int, act_itemsize: int = 2) -> dict:
    """Compulsory bytes and FLOPs of one inner-loop decode call, per sequence (all heads), averaged
    over the positions of a mini-batch.

    Dual: state read once, cache rows of earlier tokens read (mean (b-1)/2), this token's row
    written, state written once per b tokens. Primal: W and W_grad read, W_grad written every
    token, W written once per b tokens (3 + 1/b state transfers). Plus q, k, v, eta in, out out.
    Worked out for ttt-1b: DESIGN section 11.
    """
    f, b = head_dim, mini_batch_size
    F = 4 * f if mlp else f
    state = f * F + F + ((F * f + f) if mlp else 0)  # elements per head
    row = f + F + ((F + f) if mlp else 0)  # cache-row elements per head (dual)
    if form == "dual":
        state_moves = state * (1 + 1 / b) + row * ((b - 1) / 2 + 1)
    elif form == "primal":
        state_moves = state * (3 + 1 / b)
    else:
        raise UserError(f"unknown form {form!r}")
    io = (4 * f) * act_itemsize + 4  # q, k, v in, out out (activation dtype), eta (fp32)
    mean_rows = (b + 1) / 2
    if mlp:
        # grads: k W1, X2 W2, g2 W2^T; output: q W1, X2' W2; cache terms over the rows.
        flops = 2 * f * F * 5 + 2 * mean_rows * (2 * (f + F) + 2 * (F + f))
    else:
        flops = 2 * f * F * 2 + 2 * mean_rows * (f + F) * 2
    if form == "primal":
        flops += 2 * f * F * (2 if mlp else 1) * 2  # rank-1 W_grad update and W - c W_grad
    return {"bytes": int(heads * (state_moves * state_itemsize + io)), "flops": int(heads * flops),
            "state_bytes": int(heads * state * state_itemsize)}


def op_api(package: str, dual_mini_batch, settle=None):
    """The functional op API of a TTT inner-loop package (DESIGN section 4): (decode_step, prefill).

    The form follows the cache: a DualCache runs the dual form, a PrimalCache the published primal
    form. impl picks the implementation: "naive" (PyTorch reference, <package>.naive, any dtype incl.
    float64) or "triton" (<package>.triton_decode / triton_primal; CUDA, or TRITON_INTERPRET=1 on CPU)."""

    def decode_step(q, k, v, eta, c, gamma, beta, state, cache, impl="naive", advance=True):
        """One token. Mutates cache (and state at the last mini-batch position); see naive.py."""
        step = pick_step(package, impl, isinstance(cache, DualCache))
        return step(q, k, v, eta, c, gamma, beta, state, cache, advance=advance)

    def prefill(q, k, v, eta, c, gamma, beta, state, cache=None, impl="naive", advance=True):
        """Any number of tokens: whole mini-batches as matrices (PyTorch), the rest through decode_step."""
        return chunked_prefill(lambda dual: pick_step(package, impl, dual), dual_mini_batch,
                               q, k, v, eta, c, gamma, beta, state, cache, advance, settle)

    return decode_step, prefill
