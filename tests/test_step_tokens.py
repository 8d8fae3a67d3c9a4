"""The engine's bookkeeping kernel after sampling (ops/step_tokens.py) against its PyTorch reference, under
the Triton interpreter on CPU (and compiled on a GPU): tokens written at the step index, ids, the index
advanced with its wrap-around, batches over several of the kernel's row blocks."""

import pytest
import torch

from conftest import run_compiled_offline
from ttt_decode.ops import step_tokens


def _case(B, T, step, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    nxt = torch.randint(0, 50000, (B,), generator=g).to(device)
    tokens = torch.randint(0, 50000, (B, T), generator=g).to(device)
    return nxt, torch.zeros(B, dtype=torch.int64, device=device), tokens, torch.tensor([step], device=device)


@pytest.mark.parametrize("B,T,step", [(3, 8, 0), (5, 8, 7), (step_tokens.BLOCK + 3, 16, 9), (1, 1, 0)],
                         ids=["start", "wraps", "two-blocks", "one-slot"])
def test_record_tokens_kernel_matches_reference(B, T, step):
    want = _case(B, T, step)
    got = _case(B, T, step)
    step_tokens.record_tokens_reference(*want, T)
    torch.ops.ttt_decode.record_tokens(*got, T)  # the Triton kernel (interpreted on CPU)
    for w, g, name in zip(want, got, ("nxt", "ids", "tokens", "step_idx")):
        assert torch.equal(w, g), name
    assert got[3].item() == (step + 1) % T
    assert torch.equal(got[2][:, step], got[0]) and torch.equal(got[1], got[0])


def test_record_tokens_op_schema():
    """The op's schema says it writes ids, tokens and the step index (torch.compile keeps the writes)."""
    args = (*_case(4, 8, 2), 8)
    torch.library.opcheck(torch.ops.ttt_decode.record_tokens.default, args, test_utils=("test_schema",))


def test_record_tokens_refuses_other_dtypes():
    nxt, ids, tokens, step = _case(2, 4, 0)
    with pytest.raises(AssertionError, match="int64"):
        step_tokens.record_tokens(nxt.int(), ids, tokens, step, 4)


def test_record_tokens_compiles_for_sm90():
    """Compiled for sm_90 (in a process without the interpreter): one barrier, and it comes before the step
    index's store (the last global store), so no warp reads an index another has advanced."""
    code = ("import re; from ttt_decode.ops import step_tokens as s; p = s.compile_offline(2048).asm['ptx']; "
            "lines = p.splitlines(); bar = [i for i, x in enumerate(lines) if 'bar.sync' in x]; "
            "st = [i for i, x in enumerate(lines) if 'st.global' in x]; "
            "print(len(bar), bar[-1] < st[-1], all(i < bar[-1] for i in st[:-1]))")
    out = run_compiled_offline(code, timeout=300)
    assert out == ["1", "True", "True"], out


@pytest.mark.gpu
def test_gpu_record_tokens_in_a_cuda_graph():
    """Replayed from a CUDA graph, the kernel advances the index every replay and writes each step's column."""
    from ttt_decode.ops.cuda_graphs import capture_graph
    B, T = 512, 6
    nxt, ids, tokens, step = _case(B, T, 0, device="cuda")
    tokens.zero_()

    def body():
        step_tokens.record_tokens(nxt, ids, tokens, step, T)
    graph, _ = capture_graph(body, body)
    tokens.zero_()
    step.zero_()
    for i in range(T + 2):
        nxt.copy_(torch.arange(B, device="cuda") + 1000 * i)
        graph.replay()
    torch.cuda.synchronize()
    assert step.item() == (T + 2) % T
    last = {i % T: i for i in range(T + 2)}  # the replay that wrote each column last (columns 0, 1 twice)
    for col, i in last.items():
        assert torch.equal(tokens[:, col], torch.arange(B, device="cuda") + 1000 * i), col
    assert torch.equal(ids, nxt)
