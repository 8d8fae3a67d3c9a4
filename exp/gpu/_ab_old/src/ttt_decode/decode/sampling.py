"""Token selection inside the decode step: greedy, or temperature / top-k sampling without host sync.

Sampling uses the Gumbel-max trick (argmax of logits/T + Gumbel noise), which draws from
softmax(logits/T) with one `rand_like` and one argmax: both capture in a CUDA graph, unlike
torch.multinomial.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ttt_decode.errors import UserError


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.0  # 0 = greedy
    top_k: int = 0  # 0 = whole vocabulary

    def __post_init__(self):
        if self.temperature < 0:
            raise UserError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if self.top_k < 0:
            raise UserError(f"top_k must be >= 0 (0 = no limit), got {self.top_k}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def sample(logits: torch.Tensor, vocab_size: int, sampling: Sampling = Sampling()) -> torch.Tensor:
    """logits [B, V_padded] -> token ids [B] (int64), drawn from the first vocab_size columns only."""
    logits = logits[:, :vocab_size]
    if sampling.greedy:
        return logits.argmax(-1)
    scaled = logits.float() / sampling.temperature
    if sampling.top_k:
        kth = torch.topk(scaled, min(sampling.top_k, vocab_size), dim=-1).values[:, -1:]
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    u = torch.rand_like(scaled).clamp_(min=1e-20, max=1.0 - 1e-7)
    return (scaled - torch.log(-torch.log(u))).argmax(-1)
