"""K-split products for decode-step GEMMs whose output only goes into a sum.

At decode batch sizes a projection [B, K] x [K, N] with N = 2048 has too few output tiles to fill the GPU:
cuBLAS tiles ttt-1b's MLP down projection (K = 5504) 128 x 64 at B = 512, about one wave, and it ran at 85%
of the matmul floor on an H100 (exp/results/h100/splitk_gemm_h100_9e7fd45.jsonl). The same product as one
batched GEMM over s slices of K, [s, B, K/s] x [s, K/s, N] (strided views of x and the weight, no copy),
fills more of the machine: s partial sums [s, B, N], each rounded to the activations' dtype. Where the
consumer sums them anyway, the sum costs only the extra partials' reads: the TTT block's down output is
added to the float32 residual stream by the next block's first kernel (ops.ttt_block.pre_conv_step) or the
step's tail, and a Mamba mixer's out_proj output by add_rms_norm (ops.mamba), which take the partials as they
are ([s, B, N]) and add them in the residual dtype (sum_parts: a left fold, the order the fused kernels use).

Measured on an H100, us per call (fp16 partials; float32 partials lost everywhere):

    ttt-1b down (N 2048, K 5504)          B = 256: 15.98 -> 12.85 (s = 4)   B = 512: 21.00 -> 18.83 (s = 2)
                                          B = 1024: 33.23 -> 33.91 (s = 2, lost)
    mamba-1.4b out_proj (N 2048, K 4096)  B = 256: 12.16 -> 9.90 (s = 4)    B = 512: 15.18 -> 14.47 (s = 2)

An extra partial costs its consumer one more [B, N] read (~0.5 us at B = 512 on the H200), so `slices_for` splits
down at B = 256 and 512 and Mamba's out_proj at B = 256 (MEASURED), nowhere else: Mamba's out_proj at B = 512
gains about what that read costs; o_proj (10.07 -> 9.12 at B = 512, ~0.45 us a layer net) is left out because its
consumer is inductor's add + RMSNorm only in the compiled step (in the eager one the sum would be kernels of its
own); in_proj lost (exp/NOTES.md, seventeenth session).

TTT_DECODE_SPLIT_K: "auto" (the default): MEASURED, on CUDA only; "0": never; an integer s >= 1: s slices
for every projection that takes part, at every batch and on every device (tests, A/B timings). Another value,
or an s that does not divide the projection's K into slices of whole 16-byte rows, is a one-line error
before anything is allocated.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from ttt_decode.errors import UserError

ENV_SPLIT_K = "TTT_DECODE_SPLIT_K"

# (out_features, in_features) -> {batch: slices}: where a split measured faster (module docstring).
MEASURED: dict[tuple[int, int], dict[int, int]] = {(2048, 5504): {256: 4, 512: 2}, (2048, 4096): {256: 4}}


def _setting() -> str:
    value = os.environ.get(ENV_SPLIT_K, "auto").strip()
    if value != "auto" and not (value.isdigit() and int(value) >= 0):
        raise UserError(f"{ENV_SPLIT_K}={value!r} is not auto, 0 or a number of slices (auto: K-split the "
                        f"projections into the residual stream where that measured faster; 0: never); unset it "
                        f"for auto")
    return value


def check_switch(in_features: int | None = None, item_size: int = 2) -> None:
    """The one-line error for a bad TTT_DECODE_SPLIT_K, or a forced number of slices that does not divide the
    in_features of the projection a model splits (called when a model is built, before its weights are)."""
    _setting()
    if in_features is not None:
        slices_for(1, 1, in_features, "cpu", item_size)


def slices_for(batch: int, out_features: int, in_features: int, device: torch.device | str,
               item_size: int = 2) -> int:
    """How many K slices the projection [batch, in_features] x [in_features, out_features] runs in (1: a
    plain GEMM), from TTT_DECODE_SPLIT_K (module docstring)."""
    value = _setting()
    if value == "auto":
        if torch.device(device).type != "cuda":
            return 1
        return MEASURED.get((out_features, in_features), {}).get(batch, 1)
    s = max(1, int(value))
    if s > 1 and (in_features % s or (in_features // s * item_size) % 16):
        raise UserError(f"{ENV_SPLIT_K}={value}: {in_features} inputs do not split into {s} slices of whole "
                        f"16-byte rows; pick a divisor of {in_features} or unset it for auto")
    return s


def linear_parts(x: torch.Tensor, weight: torch.Tensor, slices: int) -> torch.Tensor:
    """x [B, K] @ weight[N, K]^T as `slices` partial sums over consecutive K slices -> [slices, B, N] in x's
    dtype (one batched GEMM on strided views: no copy of x or the weight)."""
    B, K = x.shape
    N = weight.shape[0]
    k = K // slices
    return torch.bmm(x.view(B, slices, k).transpose(0, 1), weight.view(N, slices, k).permute(1, 2, 0))


@triton.jit
def load_sum_parts(p, stride_part, mask, PARTS: tl.constexpr, DT: tl.constexpr):
    """In a kernel: the PARTS partial sums at pointers p + i stride_part (i < PARTS), each cast to DT and added left
    to right, as sum_parts does (PARTS 1: the one tensor, cast)."""
    acc = tl.load(p, mask=mask, other=0.0).to(DT)
    for i in tl.static_range(1, PARTS):
        acc = acc + tl.load(p + i * stride_part, mask=mask, other=0.0).to(DT)
    return acc


def sum_parts(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A [B, N] tensor, or partial sums [s, B, N], as one [B, N] in dtype: each part cast, then added left to
    right (the order of the fused kernels that take partials)."""
    if t.dim() == 2:
        return t.to(dtype)
    acc = t[0].to(dtype)
    for i in range(1, t.shape[0]):
        acc = acc + t[i].to(dtype)
    return acc
