"""TTT-Linear (M1) inner loop: the functional op API of DESIGN section 4.

  prefill(q, k, v, eta, c, gamma, beta, state, cache=None, impl="naive") -> out [B,H,N,f]
  decode_step(q, k, v, eta, c, gamma, beta, state, cache, impl="naive") -> out [B,H,f]

The form follows the cache: a `DualCache` runs the dual form, a `PrimalCache` the published primal
form. `impl` picks the implementation: "naive" (PyTorch reference, naive.py, any dtype incl. float64)
or "triton" (triton_decode.py / triton_primal.py; CUDA, or TRITON_INTERPRET=1 on CPU).
"""

from ttt_decode.ops.ttt_common import (
    DualCache,
    PrimalCache,
    TTTState,
    chunked_prefill,
    pick_step,
)
from ttt_decode.ops.ttt_linear import naive

__all__ = ["decode_step", "prefill", "DualCache", "PrimalCache", "TTTState", "naive"]


def decode_step(q, k, v, eta, c, gamma, beta, state, cache, impl="naive", advance=True):
    """One token. Mutates cache (and state at the last mini-batch position); see naive.py."""
    step = pick_step(__name__, impl, isinstance(cache, DualCache))
    return step(q, k, v, eta, c, gamma, beta, state, cache, advance=advance)


def prefill(q, k, v, eta, c, gamma, beta, state, cache=None, impl="naive", advance=True):
    """Any number of tokens: whole mini-batches as matrices (PyTorch), the rest through decode_step."""
    return chunked_prefill(lambda dual: pick_step(__name__, impl, dual), naive.dual_mini_batch,
                           q, k, v, eta, c, gamma, beta, state, cache, advance)
