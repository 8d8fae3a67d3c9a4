"""TTT LM: prefill + decode equals the full-sequence forward; state after prefill equals token by token."""

import pytest
import torch

from conftest import rel_err
from ttt_decode import models
from ttt_decode.decode import DecodeSession, generate, teacher_force
from ttt_decode.errors import UserError
from ttt_decode.ops import ttt_mlp
from ttt_decode.ops.ttt_common import DualCache, token_coeffs

NAIVE_NETS = ["mlp_1_dual", "mlp_2_dual", "mlp_1_primal", "mlp_2_primal"]


def tiny(inner_net, dtype=torch.float64, name="ttt-tiny", seed=0):
    return models.randomize_(models.build(name, inner_net=inner_net, dtype=dtype, device="cpu"), seed=seed)


def ids(B, N, seed=0, vocab=500):
    return torch.randint(0, vocab, (B, N), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("inner_net", NAIVE_NETS)
@pytest.mark.parametrize("name", ["ttt-tiny", "ttt-tiny-transformer-backbone"])
@pytest.mark.parametrize("n_prompt", [1, 7, 16, 23])
def test_prefill_then_decode_equals_full_forward_float64(inner_net, name, n_prompt):
    model = tiny(inner_net, name=name)
    x = ids(2, 41)
    full = model(x)
    tf = teacher_force(model, x, n_prompt)
    assert tf.shape == full.shape == (2, 41, model.config.padded_vocab_size)
    assert rel_err(tf, full) < 1e-8


@pytest.mark.parametrize("inner_net", ["mlp_1_dual", "mlp_2_dual"])
def test_prefill_then_decode_equals_full_forward_float32(inner_net):
    model = tiny(inner_net, dtype=torch.float32, name="ttt-tiny-64")
    x = ids(2, 37, seed=1)
    assert rel_err(teacher_force(model, x, 5), model(x)) < 1e-4


def test_float32_close_to_float64():
    m64 = tiny("mlp_2_dual")
    m32 = models.build("ttt-tiny", inner_net="mlp_2_dual", dtype=torch.float32, device="cpu")
    m32.load_state_dict({k: v.float() for k, v in m64.state_dict().items()})
    x = ids(2, 33)
    assert rel_err(m32(x), m64(x)) < 1e-4


@pytest.mark.parametrize("inner_net", NAIVE_NETS)
def test_state_after_prefill_equals_token_by_token(inner_net):
    model = tiny(inner_net)
    x = ids(3, 37, seed=2)
    s_pre = model.allocate_state(3)
    model.prefill(x, s_pre)
    s_tok = model.allocate_state(3)
    model.prefill(x[:, :1], s_tok)
    for t in range(1, 37):
        model.step(x[:, t], s_tok)
    assert s_pre.pos.item() == s_tok.pos.item() == 37 % 16
    n_valid = 37 % 16
    for lp, lt, block in zip(s_pre.layers, s_tok.layers, model.layers):
        # The inner model's state: TTT-MLP's dual cache may hold the pending term of W1 (ttt_mlp.naive.DEFER_W1),
        # which a path through whole mini-batches as matrices and a token-by-token one hold differently.
        for ls in (lp, lt):
            if isinstance(ls.cache, DualCache) and ls.ttt.is_mlp:
                ttt_mlp.naive.settle_w1(ls.ttt, ls.cache, token_coeffs(block.ttt.learnable_token_idx))
        tp, tt = lp.tensors(), lt.tensors()
        assert tp.keys() == tt.keys()
        for k in tp:
            a, b = tp[k], tt[k]
            if k.startswith("cache.") and lp.cache.__class__.__name__ == "DualCache":
                a, b = a[:, :, :n_valid], b[:, :, :n_valid]
            assert rel_err(a, b) < 1e-9, k


@pytest.mark.parametrize("inner_net", NAIVE_NETS)
@pytest.mark.parametrize("name", ["ttt-tiny", "ttt-tiny-transformer-backbone"])
def test_state_layout_and_accounting(inner_net, name):
    """One conv ring for q and k (both convolve q0: two rings would always hold the same), and the byte
    accounting counts exactly the allocated tensors: state_bytes_per_seq their size, decode_cost one
    ring's worth (W-1 slots read, one written) of traffic per ring."""
    from ttt_decode.ops.ttt_common import inner_step_cost

    model = tiny(inner_net, name=name)
    c, B = model.config, 3
    for state_dtype in (None, torch.float32):  # rings in the weight dtype, the rest in the state dtype
        state = model.allocate_state(B, state_dtype)
        rings = {n for n in state.layers[0].tensors() if n.startswith("conv_")}
        assert rings == {n for n, on in (("conv_pre", c.pre_conv), ("conv_qk", c.share_qk)) if on}
        assert state.nbytes() == B * model.state_bytes_per_seq(state_dtype)
        ring_bytes = sum(ls.tensors()[n].nbytes for ls in state.layers for n in rings)
        inner = inner_step_cost(model.kind == "mlp", model.form, c.num_heads, c.head_dim, c.mini_batch_size,
                                state.state_dtype.itemsize, model.dtype.itemsize)["bytes"]
        assert model.decode_cost(B, state_dtype)["state_bytes"] == B * c.num_layers * inner + ring_bytes


@pytest.mark.parametrize("name", ["ttt-tiny", "ttt-tiny-transformer-backbone"])
def test_state_conv_taps_follow_the_weights(name):
    """The state's tap-major conv weights (what the fused kernels read) are the parameters transposed,
    contiguous, and reset_state refreshes them after the weights change (as it does the fast weights)."""
    model = tiny("mlp_1_dual", name=name)
    state = model.allocate_state(2)
    for block, ls in zip(model.layers, state.layers):
        assert set(ls.taps) == set(block.convs()) == ({"pre", "q", "k"} if model.config.pre_conv else set())
        for n, conv in block.convs().items():
            assert ls.taps[n].is_contiguous() and torch.equal(ls.taps[n], conv.weight.t())
    with torch.no_grad():
        for block in model.layers:
            for conv in block.convs().values():
                conv.weight.mul_(-2.0)
    model.reset_state(state)
    for block, ls in zip(model.layers, state.layers):
        for n, conv in block.convs().items():
            assert torch.equal(ls.taps[n], conv.weight.t())


def test_dual_and_primal_models_agree():
    x = ids(2, 40, seed=3)
    for m in (1, 2):
        d, p = tiny(f"mlp_{m}_dual"), tiny(f"mlp_{m}_primal")
        assert rel_err(teacher_force(d, x, 3), teacher_force(p, x, 3)) < 1e-9


def test_session_reset_repeats_exactly():
    model = tiny("mlp_2_dual", dtype=torch.float32)
    x = ids(2, 10, seed=4)
    session = DecodeSession(model, 2, cuda_graph=False, max_steps=8)
    runs = []
    for _ in range(2):
        session.reset()
        session.prefill(x)
        runs.append(torch.stack([session.step().clone() for _ in range(6)]))
    assert torch.equal(runs[0], runs[1])
    assert torch.equal(session.tokens[:, :6], session.tokens[:, :6])


def test_step_allocates_no_zero_residual(monkeypatch):
    """The first block's residual is the state's zero buffer (a torch.zeros in the step was a fill kernel every
    token in the CUDA graph), and the steps leave it zero."""
    model = tiny("mlp_1_dual", dtype=torch.float32)
    state = model.allocate_state(2)
    x = ids(2, 3, seed=5)
    real = torch.zeros

    def no_zeros(*args, **kwargs):
        raise AssertionError("torch.zeros called in the step")
    monkeypatch.setattr(torch, "zeros", no_zeros)
    outs = [model.step(x[:, t], state) for t in range(3)]
    monkeypatch.setattr(torch, "zeros", real)
    assert torch.count_nonzero(state.zero_residual) == 0
    ref = model.allocate_state(2)
    for t in range(3):
        assert torch.equal(outs[t], model.step(x[:, t], ref)), t


def test_greedy_generate_follows_argmax_of_teacher_forced_logits():
    model = tiny("mlp_1_dual", dtype=torch.float64)
    prompt = ids(2, 9, seed=5)
    out = generate(model, prompt, 12, cuda_graph=False)
    tokens = out["tokens"]
    assert tokens.shape == (2, 12)
    seq = torch.cat([prompt, tokens], 1)
    logits = model(seq)[:, 8:-1, : model.vocab_size]
    assert torch.equal(logits.argmax(-1), tokens)


def test_sampling_is_seeded_and_in_vocab():
    from ttt_decode.decode import Sampling

    model = tiny("mlp_2_dual", dtype=torch.float32)
    prompt = ids(2, 4)
    runs = []
    for _ in range(2):
        torch.manual_seed(123)
        runs.append(generate(model, prompt, 10, sampling=Sampling(temperature=1.0, top_k=5),
                             cuda_graph=False)["tokens"])
    assert torch.equal(runs[0], runs[1])
    assert int(runs[0].max()) < model.vocab_size


@pytest.mark.parametrize("bad", [
    lambda: models.build("ttt-2b"),
    lambda: models.build("ttt-tiny", inner_net="mlp_3_dual", device="cpu"),
    lambda: models.build("ttt-tiny", dtype="fp8", device="cpu"),
    lambda: models.build("ttt-tiny", device="cpu").allocate_state(0),
    lambda: DecodeSession(models.build("ttt-tiny", device="cpu"), 0, cuda_graph=False),
    lambda: DecodeSession(models.build("ttt-tiny", device="cpu"), 2, cuda_graph=True),
    lambda: teacher_force(models.build("ttt-tiny", device="cpu"), ids(1, 4), 0),
    lambda: generate(models.build("ttt-tiny", device="cpu"), ids(1, 4), 0, cuda_graph=False),
    lambda: models.build("ttt-tiny", device="cpu").prefill(ids(2, 4), models.build("ttt-tiny",
                                                                                   device="cpu").allocate_state(3)),
], ids=["unknown-model", "unknown-inner-net", "bad-dtype", "batch0", "session-batch0", "graph-on-cpu",
        "n_prompt0", "genlen0", "batch-mismatch"])
def test_bad_input_raises_user_error(bad):
    with pytest.raises(UserError) as e:
        bad()
    assert "\n" not in str(e.value)


def test_config_validation():
    from ttt_decode.configs import TTTConfig, get_config

    with pytest.raises(UserError, match="not divisible"):
        TTTConfig("bad", hidden_size=100, num_layers=1, num_heads=3, intermediate_size=8)
    with pytest.raises(UserError, match="positive integer"):
        TTTConfig("bad", hidden_size=64, num_layers=0, num_heads=4, intermediate_size=8)
    with pytest.raises(UserError, match="no field"):
        get_config("ttt-1b", heads=3)
    assert get_config("ttt-1b").head_dim == 64
    assert get_config("ttt-1b").padded_vocab_size == 50280
    assert get_config("state-spaces/mamba-1.4b").name == "mamba-1.4b"


def test_checkpoint_kind_must_match_inner_net():
    from ttt_decode.configs import get_config
    from ttt_decode.models.ttt import TTTLM

    cfg = get_config("ttt-tiny", ttt_layer_type="linear")
    with pytest.raises(UserError, match="TTT-Linear"):
        TTTLM(cfg, "mlp_2_dual", device="cpu")


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["ttt-tiny", "mamba-tiny", "llama-tiny"])
def test_gpu_decode_step_logits_are_not_rounded_to_fp16(name):
    """The decode step's head writes float32 logits from the GEMM's accumulator too (the Mamba step used to
    round them to fp16 and cast: all of them then sit on the fp16 grid, and a copy kernel read 51 MB and
    wrote 103 MB a step at B = 512)."""
    torch.manual_seed(0)
    model = models.build(name, dtype="float16", device="cuda")
    state = model.allocate_state(4)
    ids = torch.randint(0, model.vocab_size, (4,), device="cuda")
    with torch.no_grad():
        logits = model.step(ids, state)
    assert logits.dtype == torch.float32
    off_grid = (logits != logits.half().float()).float().mean().item()
    assert off_grid > 0.5, f"{off_grid:.1%} of the logits are off the fp16 grid"


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["ttt-tiny", "mamba-tiny", "llama-tiny"])
def test_gpu_lm_head_writes_float32_logits_unrounded(name):
    """On CUDA the LM head of an fp16 model writes float32 logits from cuBLAS's float32 accumulator
    (models/common.py): closer to the float64 product than fp16 rounding allows (about 2e-4 relative,
    against about 1e-7 for float32 output at these sizes, measured on CPU). Added after the last device call."""
    torch.manual_seed(0)
    model = models.build(name, dtype="float16", device="cuda")
    h = torch.randn(8, model.embed.weight.shape[1], device="cuda")
    with torch.no_grad():
        logits = model.lm_head(h)
        weight = model.head_weight if model.head_weight is not None else model.embed.weight
        ref = model.norm_f(h).double() @ weight.double().t()
    assert logits.dtype == torch.float32 and logits.shape == ref.shape
    assert rel_err(logits, ref) < 3e-5
