"""Decode attention, PyTorch reference: one query per sequence against the first n keys of a KV cache.

    out[b, h] = softmax(q[b, h] . K[b, h, :n]^T / sqrt(f)) V[b, h, :n]

n is a device tensor (the number of valid cache rows), so the same call serves every position. The
reference computes over the whole cache capacity and masks, in float32 (float64 for float64 input).
"""

from __future__ import annotations

import math

import torch


def decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                     n_valid: torch.Tensor) -> torch.Tensor:
    """q [B,H,f]; k_cache, v_cache [B,H,T,f]; n_valid [1] int64 in [1, T] -> out [B,H,f] (q's dtype)."""
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    T = k_cache.shape[2]
    scores = (k_cache.to(acc) @ q.to(acc).unsqueeze(-1)).squeeze(-1) / math.sqrt(q.shape[-1])  # [B,H,T]
    valid = torch.arange(T, device=q.device) < n_valid
    probs = scores.masked_fill(~valid, float("-inf")).softmax(-1)
    return (probs.unsqueeze(-2) @ v_cache.to(acc)).squeeze(-2).to(q.dtype)
