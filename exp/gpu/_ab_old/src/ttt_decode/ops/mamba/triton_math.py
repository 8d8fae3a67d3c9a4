"""The Triton helpers both Mamba kernel modules use (triton_decode.py, triton_scan.py): the gate and the
softplus of the recurrence, with the reference's arithmetic (naive.py), and the compute dtype."""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def softplus(x):
    # log1p(exp(x)) accurate for small exp(x) (log1p from log: Goldberg), linear above 20 like torch.
    u = tl.exp(x)
    w = 1.0 + u
    lp = tl.where(w == 1.0, u, tl.log(w) * (u / (w - 1.0)))
    return tl.where(x <= 20.0, lp, x)


def compute_dtype(*tensors) -> tl.dtype:
    """float32 arithmetic, float64 if any input is float64 (as naive.compute_dtype)."""
    return tl.float64 if any(t.dtype == torch.float64 for t in tensors) else tl.float32
