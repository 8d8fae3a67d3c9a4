"""RMSNorm as every model computes it, and the accumulation dtype it and the residual stream use
(PyTorch; the fused Triton kernels round the same way)."""

from __future__ import annotations

import torch


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; every other dtype accumulates in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm in float32 (float64 for float64 input), output in the weight's dtype."""
    x = x.to(acc_dtype(x.dtype))
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x.to(weight.dtype)
