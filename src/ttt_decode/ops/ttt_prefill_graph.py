"""The whole mini-batches of a TTT prefill, replayed from one CUDA graph per shape.

Why: a prefill sends its whole mini-batches through `dual_mini_batch` (ttt_linear/naive.py,
ttt_mlp/naive.py), some 40 (M1) to 80 (M2) small PyTorch ops each, and on a GPU the host's dispatch
of those ops is the limit: ttt-1b M1 at batch 16 spent 1.0 s of wall time on about 0.25 s of kernels
(exp/results/h200/prefill_diag_h200_483f806.json), and a 32 k prompt took 44 s (M1) and 79 s (M2)
to prefill (study_context_h200_483f806/). The ops of one mini-batch have the same shapes for every
mini-batch of every layer, so they are captured once as a CUDA graph on static buffers; a mini-batch
is then its four inputs copied in, one replay and its output copied out. The graph runs the same
kernels in the same order as the eager ops.

Lifetime: graphs live inside a `prefill_graphs()` context (TTTLM.prefill opens one around its
layers), so one capture serves all layers of a prefill call and its memory is freed when the call
returns. Outside such a context, on CPU, while a CUDA graph is being captured, under torch.compile,
or for fewer than MIN_MINI_BATCHES whole mini-batches, the mini-batches run eagerly as before.

On by default since its GPU test passed on the H200 and it took a ttt-1b prefill at batch 16 (512
tokens) from 879 to 294 ms (M1) and from 2071 to 708 ms (M2) (exp/results/h200/prefill_graph_h200_5ee693e/);
TTT_DECODE_PREFILL_GRAPHS=0 turns it off (the eager mini-batches, for comparison or debugging).
"""

from __future__ import annotations

import contextlib
import os

import torch

from ttt_decode.errors import UserError
from ttt_decode.ops.cuda_graphs import capture_graph

ENV = "TTT_DECODE_PREFILL_GRAPHS"
# A capture costs about two eager mini-batches (a warm-up and the capture); below this many whole
# mini-batches in one call, eager is as fast.
MIN_MINI_BATCHES = 4

_graphs: dict | None = None  # open prefill_graphs() context: key -> MiniBatchGraph


def check_switch() -> None:
    """A one-line error where TTT_DECODE_PREFILL_GRAPHS is set to something other than 0 or 1 (called when a TTT
    model is built)."""
    value = os.environ.get(ENV, "1")
    if value not in ("0", "1"):
        raise UserError(f"{ENV}={value!r} is not 0 or 1 (1, the default: prefill replays one CUDA graph per whole "
                        f"mini-batch; 0: eager mini-batches)")


@contextlib.contextmanager
def prefill_graphs():
    """Within this context, whole mini-batches of chunked_prefill on CUDA replay one graph per shape."""
    global _graphs
    outer = _graphs
    if outer is None:
        _graphs = {}
    try:
        yield
    finally:
        if outer is None:
            _graphs = None


def _cuda_capture(body):
    """body() captured as a CUDA graph (after a warm-up run) -> (its output tensors, replay)."""
    graph, out = capture_graph(body, body)
    return out, graph.replay


def _capture_for(device: torch.device):
    """The capture a device supports, or None (run eagerly)."""
    return _cuda_capture if device.type == "cuda" else None


class MiniBatchGraph:
    """fn(q, k, v, eta, c, gamma, beta, state) -> out for one mini-batch, captured on static buffers
    shaped like the given slices and state; `run` plays it over consecutive mini-batches."""

    def __init__(self, fn, capture, q, k, v, eta, c, gamma, beta, state):
        self.inputs = [x.clone() for x in (q, k, v, eta, c, gamma, beta)]
        self.state = state.clone()
        with torch.no_grad():
            self.out, self.replay = capture(lambda: fn(*self.inputs, self.state))

    def run(self, q, k, v, eta, c, gamma, beta, state, out, t: int, count: int) -> None:
        """Mini-batches [t, t + count b) of q, k, v, eta [B,H,N,...] into out; advances state."""
        b = c.shape[0]
        for dst, src in zip(self.inputs[4:], (c, gamma, beta)):
            dst.copy_(src)
        self.state.copy_(state)
        for i in range(count):
            s = slice(t + i * b, t + (i + 1) * b)
            for dst, src in zip(self.inputs[:4], (q, k, v, eta)):
                dst.copy_(src[:, :, s])
            self.replay()
            out[:, :, s] = self.out
        state.copy_(self.state)


def _key(fn, tensors):
    return (fn, tuple((tuple(x.shape), x.dtype, x.device) for x in tensors))


def run_whole_mini_batches(fn, q, k, v, eta, c, gamma, beta, state, out, t: int, count: int) -> None:
    """count whole mini-batches of fn from token t: from a graph where one may be used, else eagerly."""
    b = c.shape[0]
    capture = _capture_for(q.device)
    use = (_graphs is not None and capture is not None and count >= MIN_MINI_BATCHES
           and os.environ.get(ENV, "1") != "0" and not torch.compiler.is_compiling()
           and not (q.is_cuda and torch.cuda.is_current_stream_capturing()))
    if not use:
        for i in range(count):
            s = slice(t + i * b, t + (i + 1) * b)
            out[:, :, s] = fn(q[:, :, s], k[:, :, s], v[:, :, s], eta[:, :, s], c, gamma, beta, state)
        return
    first = slice(t, t + b)
    example = (q[:, :, first], k[:, :, first], v[:, :, first], eta[:, :, first], c, gamma, beta)
    key = _key(fn, (*example, *state.tensors().values()))
    graph = _graphs.get(key)
    if graph is None:
        graph = _graphs[key] = MiniBatchGraph(fn, capture, *example, state)
    graph.run(q, k, v, eta, c, gamma, beta, state, out, t, count)
