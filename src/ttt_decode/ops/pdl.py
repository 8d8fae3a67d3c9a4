"""Programmatic dependent launch (PDL) for the decode step's Triton kernels (Hopper and newer).

In a CUDA graph each kernel normally starts only after the previous one has finished and its launch has
been processed: about a microsecond of idle GPU per kernel boundary, at ~400 boundaries a mamba-1.4b
step. A kernel launched with PDL (`launch_pdl=True`) may be scheduled while its predecessor drains; it
waits in `wait_for_prior` (PTX griddepcontrol.wait: the prior grids complete and their writes become
visible) before it touches memory, so the data flow is exactly that of the serial launch. Every kernel
that opts in calls it first, before any load or store. The predecessor needs nothing (a grid that never
signals its dependents releases them as its blocks exit).

`enabled(device)`: CUDA devices of compute capability >= 9.0, not under the Triton interpreter, and not
switched off with TTT_DECODE_PDL=0 (for an A/B, or a driver that refuses the launch attribute).
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

from ttt_decode.ops.kernel_op import interpreting


@triton.jit
def wait_for_prior(PDL: tl.constexpr):
    """With PDL, block until the previous kernels have completed and their writes are visible."""
    if PDL:
        tl.extra.cuda.gdc_wait()


@functools.lru_cache(maxsize=None)
def _capable(index: int) -> bool:
    return torch.cuda.get_device_capability(index)[0] >= 9


def enabled(device: torch.device) -> bool:
    """Whether Triton kernels on this device launch with PDL (see the module docstring)."""
    if device.type != "cuda" or interpreting() or os.environ.get("TTT_DECODE_PDL", "1") == "0":
        return False
    return _capable(device.index if device.index is not None else torch.cuda.current_device())


def launch_options(device: torch.device) -> dict:
    """The kernel's PDL constexpr and, where enabled, Triton's launch option: kernel[grid](..., **these)."""
    on = enabled(device)
    return {"PDL": on, "launch_pdl": True} if on else {"PDL": False}
