"""The whole mini-batches of a TTT prefill replayed from one CUDA graph (ops/ttt_prefill_graph.py).

On CPU the graph's contract (static buffers, a fixed output refilled by each replay) is played by
`replay_eagerly`, which runs the captured body again on the static buffers: what these tests check is
the plumbing around the graph (inputs, output slices, the state carried in and out, which calls use
it), against the eager prefill. The GPU test captures real graphs."""

import pytest
import torch

from ttt_decode import models
from ttt_decode.configs import get_config
from ttt_decode.decode.engine import state_tensors
from ttt_decode.ops import ttt_prefill_graph as tpg

NETS = ["mlp_1_dual", "mlp_2_dual", "mlp_1_primal", "mlp_2_primal"]


def replay_eagerly(body):
    """The graph's contract without a GPU: a fixed output tensor, refilled by each replay."""
    out = body()

    def replay():
        out.copy_(body())

    return out, replay


@pytest.fixture
def counted_capture(monkeypatch):
    """CPU tensors captured by replay_eagerly; counts captures and replays."""
    counts = {"captures": 0, "replays": 0}

    def capture(body):
        counts["captures"] += 1
        out, replay = replay_eagerly(body)

        def counted():
            counts["replays"] += 1
            replay()

        return out, counted

    monkeypatch.setattr(tpg, "_capture_for", lambda device: capture)
    return counts


def _prefill_twice(net, device, dtype, pieces, graphs: bool, monkeypatch, name="ttt-tiny"):
    """Prefill the model with the given prompt pieces one after the other (so later pieces start inside a
    mini-batch); returns the last logits and the state's tensors."""
    monkeypatch.setenv(tpg.ENV, "1" if graphs else "0")
    torch.manual_seed(0)
    model = models.build(name, inner_net=net, device=device, dtype=dtype)
    B = 3
    state = model.allocate_state(B)
    ids = torch.randint(0, model.vocab_size, (B, sum(pieces)), generator=torch.Generator().manual_seed(1)).to(device)
    t, logits = 0, None
    for n in pieces:
        logits = model.prefill(ids[:, t:t + n], state, last_only=True)
        t += n
    return logits, [x.clone() for x in state_tensors(state)]


@pytest.mark.parametrize("net", NETS)
def test_graph_prefill_equals_eager_prefill(net, counted_capture, monkeypatch):
    # 5 tokens, then 101: 11 to the mini-batch boundary, 5 whole mini-batches of 16, 10 left over.
    pieces = [5, 101]
    eager_logits, eager_state = _prefill_twice(net, "cpu", torch.float32, pieces, False, monkeypatch)
    assert counted_capture == {"captures": 0, "replays": 0}
    logits, state = _prefill_twice(net, "cpu", torch.float32, pieces, True, monkeypatch)
    layers = get_config("ttt-tiny").num_layers
    # One capture per prefill call that has enough whole mini-batches, shared by all its layers.
    assert counted_capture == {"captures": 1, "replays": layers * 5}
    assert torch.equal(logits, eager_logits)
    assert len(state) == len(eager_state)
    for a, b in zip(state, eager_state):
        assert torch.equal(a, b)
    assert tpg._graphs is None  # freed when the prefill returns


def test_few_whole_mini_batches_run_eagerly(counted_capture, monkeypatch):
    _prefill_twice("mlp_2_dual", "cpu", torch.float32, [16 * (tpg.MIN_MINI_BATCHES - 1) + 7], True, monkeypatch)
    assert counted_capture["captures"] == 0


@pytest.mark.parametrize("env", [None, "1", "0"])
def test_on_by_default_and_off_when_asked(env, counted_capture, monkeypatch):
    """The graph prefill is on unless TTT_DECODE_PREFILL_GRAPHS=0."""
    if env is None:
        monkeypatch.delenv(tpg.ENV, raising=False)
    else:
        monkeypatch.setenv(tpg.ENV, env)
    torch.manual_seed(0)
    model = models.build("ttt-tiny", inner_net="mlp_1_dual", device="cpu", dtype=torch.float32)
    model.prefill(torch.randint(0, model.vocab_size, (2, 16 * 8)), model.allocate_state(2))
    assert counted_capture["captures"] == (0 if env == "0" else 1)


def test_the_op_outside_a_prefill_graphs_context_runs_eagerly(counted_capture, monkeypatch):
    from ttt_decode.ops import ttt_mlp

    monkeypatch.setenv(tpg.ENV, "1")
    from ttt_decode.ops.ttt_common import TTTState, token_coeffs

    B, H, f, N = 2, 2, 8, 16 * 6
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, H, N, f, generator=g) for _ in range(3))
    eta = torch.rand(B, H, N, generator=g) * 0.1
    c = token_coeffs(torch.zeros(16))
    gamma, beta = torch.ones(H, f), torch.zeros(H, f)

    def state():
        gw = torch.Generator().manual_seed(2)
        W1, W2 = torch.randn(B, H, f, 4 * f, generator=gw) * 0.1, torch.randn(B, H, 4 * f, f, generator=gw) * 0.1
        return TTTState(W1, torch.zeros(B, H, 4 * f), W2, torch.zeros(B, H, f))

    s1, s2 = state(), state()
    eager = ttt_mlp.prefill(q, k, v, eta, c, gamma, beta, s1)
    assert counted_capture["captures"] == 0
    with tpg.prefill_graphs():
        with tpg.prefill_graphs():  # nested: the outer context keeps the graphs
            graphed = ttt_mlp.prefill(q, k, v, eta, c, gamma, beta, s2)
        assert tpg._graphs is not None and len(tpg._graphs) == 1
    assert tpg._graphs is None
    assert counted_capture == {"captures": 1, "replays": 6}
    assert torch.equal(graphed, eager)
    for a, b in zip(s1.tensors().values(), s2.tensors().values()):
        assert torch.equal(a, b)


@pytest.mark.gpu
@pytest.mark.parametrize("net", ["mlp_1_dual_triton", "mlp_2_dual_triton", "mlp_2_primal_triton"])
def test_gpu_graph_prefill_matches_eager(net, monkeypatch):
    """Real CUDA graphs against the eager ops, ttt-1b in fp16: the same kernels in the same order, so the
    results agree to fp16 rounding."""
    pieces = [5, 16 * 40 + 3]
    eager_logits, eager_state = _prefill_twice(net, "cuda", torch.float16, pieces, False, monkeypatch, "ttt-1b")
    logits, state = _prefill_twice(net, "cuda", torch.float16, pieces, True, monkeypatch, "ttt-1b")
    torch.testing.assert_close(logits, eager_logits, rtol=2e-3, atol=2e-3)
    for a, b in zip(state, eager_state):
        torch.testing.assert_close(a, b, rtol=2e-3, atol=2e-3)
