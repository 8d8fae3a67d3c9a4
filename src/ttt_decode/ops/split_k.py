"""Deterministic split-K in one launch: the Triton helper both split-K kernels use (ops/linear.py, Mamba's
conv + x_proj kernel in ops/mamba/triton_decode.py).

A product whose K is split over n_split programs per output tile: each program stores its fp32 partial
in a workspace [n_split, ...] and increments the tile's counter; the program that sees the count reach
n_split sums the partials in split order 0, 1, ... and writes the output, then zeroes the counter for the
next call. The order of the sum never depends on which program finishes last, so the result is the
same bits on every run (a CUDA graph replay equals the eager step bitwise), and no second launch reduces
the partials (cuBLAS's split-K needs one). Memory order: the block barrier puts every lane's partial
before the counter's release (gpu scope); the last program's acquire puts the other programs' partials
before its loads, which bypass L1 (`.cg`) so that no line an earlier call left there is read.

The counters are one persistent int32 buffer per device (`counters`), zero between calls: calls on one
stream are serialised, which is how a decode step runs. Two split-K calls running concurrently on two
streams would share it; nothing here does that.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

# Counter slots per device: at most this many output tiles in one split-K call.
MAX_TILES = 4096


@functools.lru_cache(maxsize=None)
def counters(device: torch.device) -> torch.Tensor:
    """The device's zeroed tile counters (allocated once; every call leaves them zero)."""
    return torch.zeros(MAX_TILES, dtype=torch.int32, device=device)


@triton.jit
def reduce_splits(acc, part_ptr, count_ptr, tile, split, n_split, split_stride, offs, mask):
    """Store this split's partial acc at part_ptr + split * split_stride + offs; returns (last, total):
    last is true in the one program of the tile that finished last, and there total is the sum of all
    n_split partials in split order (elsewhere total is acc, unused)."""
    tl.store(part_ptr + split.to(tl.int64) * split_stride + offs, acc, mask=mask)
    tl.debug_barrier()  # every lane's partial is stored before the counter says so
    done = tl.atomic_add(count_ptr + tile, 1, sem="acq_rel", scope="gpu")
    last = done == n_split - 1
    total = acc
    if last:
        total = tl.load(part_ptr + offs, mask=mask, other=0.0, cache_modifier=".cg")
        for s in range(1, n_split):
            total += tl.load(part_ptr + s * split_stride + offs, mask=mask, other=0.0, cache_modifier=".cg")
        tl.store(count_ptr + tile, 0)  # ready for the next call (stream order makes it visible)
    return last, total


def check_tiles(tiles: int, what: str) -> None:
    assert tiles <= MAX_TILES, f"{what}: {tiles} split-K tiles > the {MAX_TILES} counters (ops/split_k.py)"


def workspace(n_split: int, rows: int, cols: int, device) -> torch.Tensor:
    """The fp32 partials of one call, [n_split, rows, cols] (every element written before it is read)."""
    return torch.empty((n_split, rows, cols), dtype=torch.float32, device=device)

