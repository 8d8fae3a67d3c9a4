"""Kernel launchers as torch custom ops (torch.library), and the checks of the Triton environment that
every launcher runs first.

A custom op lets torch.compile trace a decode step with the Triton kernels in it as one graph: the op's
schema says which arguments it mutates (the in-place state updates), and its fake says what it returns
without running it.

    op = kernel_op("ttt_mlp_dual_step", ["Tensor q", ..., "Tensor W1", ...], mutates=("W1", ...),
                   impl=lambda *t: ..., fake=lambda *t: ...)          # -> torch.ops.ttt_decode.<name>
    op = step_op("ttt_linear_dual_step", ("q", ..., "W1", ...), ("W1", ...), launch)
        # the common case: every argument a tensor, the output shaped like the first (q [B, H, f]),
        # launch(*tensors, out) fills it.
"""

from __future__ import annotations

import functools
import os
from typing import Callable, Sequence

import torch
import triton

from ttt_decode.errors import UserError

NAMESPACE = "ttt_decode"


def kernel_op(name: str, params: Sequence[str], mutates: Sequence[str], impl: Callable, fake: Callable,
              returns: str = "Tensor"):
    """Register `ttt_decode::name` with the schema built from params ("Type name", torch schema types)."""
    names = [p.split()[-1] for p in params]
    unknown = set(mutates) - set(names)
    assert not unknown, f"{name}: mutated arguments {sorted(unknown)} are not parameters"
    args = []
    for i, (p, n) in enumerate(zip(params, names)):
        kind = p.split()[0]
        # A distinct alias set per mutated tensor: each is written in place, none aliases another.
        args.append(f"{kind}(a{i}!) {n}" if n in mutates else p)
    schema = f"({', '.join(args)}) -> {returns}"
    op = torch.library.custom_op(f"{NAMESPACE}::{name}", impl, mutates_args=tuple(mutates), schema=schema)
    op.register_fake(fake)
    return op


def step_op(name: str, tensors: Sequence[str], mutates: Sequence[str], launch: Callable):
    """A decode-step op: all arguments tensors, returns a new tensor like the first, filled by
    launch(*tensors, out)."""

    def impl(*args):
        out = torch.empty(args[0].shape, dtype=args[0].dtype, device=args[0].device)
        return launch(*args, out)

    def fake(*args):
        return torch.empty(args[0].shape, dtype=args[0].dtype, device=args[0].device)

    return kernel_op(name, [f"Tensor {n}" for n in tensors], mutates, impl, fake)


def interpreting() -> bool:
    """Kernels run in the Triton interpreter (CPU tests) rather than compiled for a GPU."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@functools.lru_cache(maxsize=None)
def interpreter_problem() -> str | None:
    """Why the Triton interpreter cannot run a kernel with a loop bound read on the device, or None.

    Triton 3.6's interpreter converts a loop bound held in a tensor with int() on a one-element
    array, an error from numpy 2.4 on (fixed upstream in Triton 3.7); the decode attention kernel has
    such a loop (its bound is the number of valid cache rows, read on the device)."""
    import numpy

    t_ver = tuple(int(p) for p in triton.__version__.split(".")[:2])
    n_ver = tuple(int(p) for p in numpy.__version__.split(".")[:2])
    if t_ver < (3, 7) and n_ver >= (2, 4):
        return (f"the Triton {triton.__version__} interpreter cannot run the decode attention kernel with numpy "
                f"{numpy.__version__} (it needs numpy < 2.4; fixed in Triton 3.7): pip install 'numpy<2.4' "
                f"or a newer triton")
    return None


def check_interpreter() -> None:
    """A one-line error where the interpreter is known not to run a kernel with a device-side loop bound."""
    problem = interpreter_problem() if interpreting() else None
    if problem:
        raise UserError(problem)
