"""CUDA graph capture shared by the decode session (one graph per token) and the TTT prefill (one graph
per whole mini-batch)."""

from __future__ import annotations

import torch


def capture_graph(fn, warm_up) -> tuple[torch.cuda.CUDAGraph, object]:
    """(graph, output) of one call of fn captured in a CUDA graph. warm_up() runs first on a side stream
    (compilation, autotuning, lazy allocations stay out of the graph; the current stream is not
    disturbed), as torch and mamba-ssm's capture does."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        warm_up()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()
    return graph, out
