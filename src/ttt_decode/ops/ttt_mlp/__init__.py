"""TTT-MLP (M2) inner loop: the functional op API of DESIGN section 4 (ops.ttt_common.op_api).

  prefill(q, k, v, eta, c, gamma, beta, state, cache=None, impl="naive") -> out [B,H,N,f]
  decode_step(q, k, v, eta, c, gamma, beta, state, cache, impl="naive") -> out [B,H,f]
"""

from ttt_decode.ops.ttt_common import DualCache, PrimalCache, TTTState, op_api
from ttt_decode.ops.ttt_mlp import naive

__all__ = ["decode_step", "prefill", "DualCache", "PrimalCache", "TTTState", "naive"]

decode_step, prefill = op_api(__name__, naive.dual_mini_batch, naive.settle_w1)
