"""The TTT block's fused elementwise kernels (ops/ttt_block_triton.py) against their float64 reference
(ops/ttt_block.py), under TRITON_INTERPRET=1 on CPU; and the model that uses them against the model
on the PyTorch path.

Each op case runs 21 consecutive tokens (every conv-ring slot several times, every mini-batch position
of the rotary table, the first token without a pending residual), with fresh random inputs each
token, and checks the outputs and the ring after every token. Errors are measured against the
reference run in float64 on the same (rounded) inputs: float32 within 1e-5; float16 / bfloat16 at
most 2x the error of the PyTorch path run in the same dtype (plus 1e-6), and under 2e-2. Outputs are
NaN-poisoned, so an unwritten element fails. The Triton interpreter truncates float32 -> bfloat16
casts (the GPU rounds to nearest, as torch does), so on CPU bfloat16 is held to 4x; the GPU cases
(pytest -m gpu) run the same tokens at ttt-1b shapes with 2x for every dtype."""

import pytest
import torch

from conftest import rel_err
from ttt_decode.ops import ttt_block as ref
from ttt_decode.ops import ttt_block_triton as tri

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
W, MB, TOKENS = 4, 16, 21


@pytest.fixture(autouse=True)
def nan_empty(monkeypatch):
    """torch.empty returns NaN-filled floating tensors (poisons the kernels' outputs)."""
    orig = torch.empty

    def empty(*args, **kwargs):
        t = orig(*args, **kwargs)
        return t.fill_(float("nan")) if t.is_floating_point() else t

    monkeypatch.setattr(torch, "empty", empty)


def _factor(act, device) -> float:
    return 4.0 if act == torch.bfloat16 and device == "cpu" else 2.0


def _check(name, t, tri_out, same_out, ref_out, act):
    err = rel_err(tri_out, ref_out)
    if act == torch.float32:
        assert err < 1e-5, f"{name} token {t}: rel err {err:.2e}"
    else:
        factor = _factor(act, tri_out.device.type)
        bound = factor * rel_err(same_out, ref_out) + 1e-6
        assert err <= bound and err < 2e-2, f"{name} token {t}: rel err {err:.2e} (PyTorch path {bound / factor:.2e})"


def _params(D, act, g, bias):
    def r(*shape, scale=1.0, shift=0.0):
        return (shift + scale * torch.randn(*shape, generator=g)).to(act)
    return dict(norm_c=r(D, scale=0.1, shift=1.0), norm_s=r(D, scale=0.1, shift=1.0), conv_w=r(W, D, scale=0.5),
                conv_b=r(D, scale=0.1) if bias else None)


def _run_three(fn_name, args64, args_same, args_tri):
    """The same step through the float64 reference, the PyTorch path in the inputs' dtype, the kernel."""
    return (getattr(ref, fn_name)(*args64), getattr(ref, fn_name)(*args_same), getattr(tri, fn_name)(*args_tri))


def _d(x):
    return x.double() if isinstance(x, torch.Tensor) and x.is_floating_point() else x


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("key", list(DTYPES))
@pytest.mark.parametrize("B,D", [(3, 64), (2, 96)], ids=["D64", "D96"])
def test_pre_conv_step_matches_reference(B, D, key, bias):
    run_pre_conv(B, D, DTYPES[key], bias, "cpu")


@pytest.mark.parametrize("key", list(DTYPES))
@pytest.mark.parametrize("parts", [2, 3, 4])
def test_pre_conv_step_adds_k_split_partials(parts, key):
    """delta as the down projection's K-split partial sums [s, B, D] (ops.split_k): the kernel adds them left
    to right in the residual dtype, as ops.split_k.sum_parts does in the reference."""
    run_pre_conv(3, 64, DTYPES[key], True, "cpu", parts=parts)


@pytest.mark.gpu
@pytest.mark.parametrize("key", list(DTYPES))
@pytest.mark.parametrize("parts", [0, 2, 4])
def test_gpu_pre_conv_step_matches_reference(key, parts):
    run_pre_conv(64, 2048, DTYPES[key], True, "cuda", parts=parts)


def run_pre_conv(B, D, act, bias, device, parts=0):
    g = torch.Generator().manual_seed(1)
    P = {n: t.to(device) if t is not None else None for n, t in _params(D, act, g, bias).items()}
    ring0 = torch.randn(B, W, D, generator=g).to(act).to(device)
    rings = [ring0.double(), ring0.clone(), ring0.clone()]  # float64 reference, same dtype, kernel
    conv_pos = torch.zeros(1, dtype=torch.int64, device=device)
    for t in range(TOKENS):
        h = torch.randn(B, D, generator=g).to(device)
        shape = (parts, B, D) if parts else (B, D)
        delta = None if t == 0 else torch.randn(shape, generator=g).to(act).to(device)

        def args(i, cast):
            return (cast(h), cast(delta) if delta is not None else None, cast(P["norm_c"]), rings[i], conv_pos,
                    cast(P["conv_w"]), cast(P["conv_b"]) if bias else None, cast(P["norm_s"]), 1e-6)
        out64, same, out = _run_three("pre_conv_step", args(0, _d), args(1, lambda x: x), args(2, lambda x: x))
        for i, what in enumerate(("h", "x")):
            assert out[i].dtype == same[i].dtype and out[i].shape == same[i].shape
            _check(what, t, out[i], same[i], out64[i], act)
        # The ring slot holds the normed input, rounded to the ring's dtype.
        _check("ring", t, rings[2], rings[1], rings[0], act)
        conv_pos.copy_((conv_pos + 1) % W)


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("key", list(DTYPES))
@pytest.mark.parametrize("B,H,f", [(3, 4, 16), (2, 3, 32)], ids=["H4-f16", "H3-f32"])
def test_qk_prep_matches_reference(B, H, f, key, bias):
    run_qk_prep(B, H, f, DTYPES[key], bias, "cpu")


@pytest.mark.gpu
@pytest.mark.parametrize("key", list(DTYPES))
def test_gpu_qk_prep_matches_reference(key):
    run_qk_prep(64, 32, 64, DTYPES[key], True, "cuda")


def run_qk_prep(B, H, f, act, bias, device):
    D = H * f
    g = torch.Generator().manual_seed(2)

    def r(*shape, scale=1.0):
        return (scale * torch.randn(*shape, generator=g)).to(act).to(device)
    wq, wk = r(W, D, scale=0.5), r(W, D, scale=0.5)  # tap-major, as the model's state keeps them
    bq, bk = (r(D, scale=0.1), r(D, scale=0.1)) if bias else (None, None)
    angles = torch.arange(MB)[:, None] * torch.rand(f // 2, generator=g)[None]
    cos, sin = angles.cos().to(device), angles.sin().to(device)  # float32, as the model's table
    lr_bias, token_idx = r(H, scale=0.3), r(MB, scale=0.1)
    ring0 = r(B, W, D)  # the q and k convs' one ring
    rings = [ring0.double(), ring0.clone(), ring0.clone()]
    conv_pos, pos = [torch.zeros(1, dtype=torch.int64, device=device) for _ in range(2)]
    lr_col = 3 * D
    for t in range(TOKENS):
        p = r(B, 3 * D + H)

        def args(i, cast):
            return (cast(p), rings[i], conv_pos, cast(wq), cast(bq) if bias else None, cast(wk),
                    cast(bk) if bias else None, cos, sin, pos, cast(lr_bias), cast(token_idx), 1.0, H, lr_col)
        out64, same, out = _run_three("qk_prep", args(0, _d), args(1, lambda x: x), args(2, lambda x: x))
        for i, what in enumerate(("q", "k", "eta", "c")):
            assert out[i].dtype == same[i].dtype and out[i].shape == same[i].shape, what
            _check(what, t, out[i], same[i], out64[i], act if what in ("q", "k", "c") else torch.float32)
        # The slot gets q0 itself, once for both convs: exact.
        torch.testing.assert_close(rings[2], rings[1], atol=0, rtol=0)
        conv_pos.copy_((conv_pos + 1) % W)
        pos.copy_((pos + 1) % MB)


@pytest.mark.parametrize("gate", [True, False], ids=["gate", "nogate"])
@pytest.mark.parametrize("key", list(DTYPES))
@pytest.mark.parametrize("B,D", [(3, 64), (2, 96)], ids=["D64", "D96"])
def test_gate_norm_matches_reference(B, D, key, gate):
    run_gate_norm(B, D, DTYPES[key], gate, "cpu")


@pytest.mark.gpu
@pytest.mark.parametrize("key", list(DTYPES))
def test_gpu_gate_norm_matches_reference(key):
    run_gate_norm(512, 2048, DTYPES[key], True, "cuda")


def run_gate_norm(B, D, act, gate, device):
    """gelu_tanh(g) * LayerNorm(z): the gate columns read from a wider projection row (strided, as the
    model passes them), several rows, inputs of a few scales."""
    g_ = torch.Generator().manual_seed(3)

    def r(*shape, scale=1.0, shift=0.0):
        return (shift + scale * torch.randn(*shape, generator=g_)).to(act).to(device)
    z = r(B, D, scale=3.0, shift=0.5)
    p = r(B, 3 * D + 5)
    g = p[:, D:2 * D] if gate else None
    w, b = r(D, scale=0.1, shift=1.0), r(D, scale=0.1)
    out64, same, out = _run_three("gate_norm", (_d(z), _d(g), _d(w), _d(b), 1e-6), (z, g, w, b, 1e-6),
                                  (z, g, w, b, 1e-6))
    assert out.dtype == same.dtype == act and out.shape == same.shape == (B, D)
    _check("gate_norm", 0, out, same, out64, act)


def test_fused_ops_schema_and_fake():
    """The custom ops' schemas (the rings are mutated) and fake implementations are right for compile."""
    B, H, f = 2, 2, 16
    D = H * f
    x = torch.randn(B, D)
    ring = torch.randn(B, W, D)
    pos = torch.zeros(1, dtype=torch.int64)
    w, b_, n = torch.randn(W, D), torch.randn(D), torch.ones(D)  # conv weights tap-major
    torch.library.opcheck(torch.ops.ttt_decode.ttt_pre_conv_step.default, (x, x.clone(), n, ring, pos, w, b_, n, 1e-6),
                          test_utils=("test_schema", "test_faketensor"))
    p = torch.randn(B, 3 * D + H)
    cos = torch.randn(MB, f // 2)
    torch.library.opcheck(torch.ops.ttt_decode.ttt_qk_prep.default,
                          (p, ring.clone(), pos, w, b_, w.clone(), b_.clone(), cos, cos.clone(), pos,
                           torch.randn(H), torch.randn(MB), 1.0, H, 3 * D),
                          test_utils=("test_schema", "test_faketensor"))
    torch.library.opcheck(torch.ops.ttt_decode.ttt_gate_norm.default, (x, x.clone(), n, b_, 1e-6),
                          test_utils=("test_schema", "test_faketensor"))


# M2 in the interpreter is slow: one config; M1 on each (head dim 16 and 64, and the Transformer
# backbone, which has no convs and keeps the PyTorch path around its Triton inner kernel).
@pytest.mark.parametrize("config,mlp", [("ttt-tiny", 2), ("ttt-tiny", 1), ("ttt-tiny-64", 1),
                                        ("ttt-tiny-transformer-backbone", 1)])
def test_model_step_fused_matches_pytorch_path(config, mlp):
    """The model with Triton inner kernels (and so the fused block kernels) decodes the same logits as the
    same weights on the PyTorch path, token by token past a mini-batch boundary, in float32."""
    from ttt_decode.models import build
    from ttt_decode.ops import ttt_block_triton

    fused = build(config, inner_net=f"mlp_{mlp}_dual_triton", dtype="float32", device="cpu")
    plain = build(config, inner_net=f"mlp_{mlp}_dual", dtype="float32", device="cpu")
    plain.load_state_dict(fused.state_dict())
    assert all(block.fused is ttt_block_triton for block in fused.layers)
    B = 3
    ids = torch.randint(0, 500, (B, 22), generator=torch.Generator().manual_seed(0))
    states = [m.allocate_state(B) for m in (fused, plain)]
    a, b = fused.prefill(ids[:, :3], states[0]), plain.prefill(ids[:, :3], states[1])
    for t in range(3, ids.shape[1]):
        a, b = fused.step(ids[:, t], states[0]), plain.step(ids[:, t], states[1])
        assert rel_err(a, b) < 1e-4, t
    for la, lb in zip(states[0].layers, states[1].layers):
        for name, ta in la.tensors().items():
            assert rel_err(ta, lb.tensors()[name]) < 1e-4, name


def test_model_step_fuses_gate_norm_into_the_inner_kernel(monkeypatch):
    """The model's fused dual step takes the post-norm and gate too (TTT_DECODE_FUSED_GATE_NORM=1, the default):
    where the dispatcher folds it into the kernel (forced here for M1, which does not by default) no gate_norm
    kernel runs in a step, one launch a layer less; where it does not ("1, not folded"), and with the switch 0,
    gate_norm's own kernel runs after the step; the same logits every way. Another switch value is a one-line
    error before anything is built."""
    from ttt_decode.errors import UserError
    from ttt_decode.models import build
    from ttt_decode.ops import ttt_block_triton
    from ttt_decode.ops.ttt_linear import triton_decode

    calls = []
    real = ttt_block_triton.gate_norm_launch
    monkeypatch.setattr(ttt_block_triton, "gate_norm_launch", lambda *a, **k: calls.append(1) or real(*a, **k))
    default = triton_decode.dual_config
    ids = torch.randint(0, 500, (2, 20), generator=torch.Generator().manual_seed(1))
    logits, counts = {}, {}
    for switch in ("1", "1, not folded", "0"):  # the environment gets the first character
        fold = switch == "1"
        monkeypatch.setattr(triton_decode, "dual_config", lambda *a, _f=fold: {**default(*a), "GATE_NORM": _f})
        monkeypatch.setenv("TTT_DECODE_FUSED_GATE_NORM", switch[0])
        torch.manual_seed(0)
        model = build("ttt-tiny", inner_net="mlp_1_dual_triton", dtype="float32", device="cpu")
        on = switch[0] == "1"
        assert all(block.ttt.fuse_gate_norm == on for block in model.layers)
        state = model.allocate_state(2)
        assert all((ls.row_counters is not None) == on for ls in state.layers)
        calls.clear()
        logits[switch] = [model.step(ids[:, t], state) for t in range(ids.shape[1])]
        counts[switch] = len(calls)
        if on:
            assert not state.layers[0].row_counters.any()
    every = ids.shape[1] * len(model.layers)
    assert counts == {"1": 0, "1, not folded": every, "0": every}, counts
    for other in ("1, not folded", "0"):
        for a, b in zip(logits["1"], logits[other]):
            assert rel_err(a, b) < 1e-5
    monkeypatch.setenv("TTT_DECODE_FUSED_GATE_NORM", "yes")
    with pytest.raises(UserError, match="TTT_DECODE_FUSED_GATE_NORM='yes' is not 0 or 1"):
        build("ttt-tiny", inner_net="mlp_1_dual_triton", dtype="float32", device="cpu")


@pytest.mark.parametrize("split", ["0", "2"], ids=["plain", "split-k"])
@pytest.mark.parametrize("config", ["ttt-tiny", "ttt-tiny-transformer-backbone"])
def test_compiled_step_traces_the_block_once(config, split, monkeypatch):
    """Regional compilation: every block, the first included, hits one compiled graph (the first block
    gets the embedding as its pending residual, so its guards are those of the others; with the down
    projection K-split, as the partial sums [s, B, D] the others get: TTTInferenceState.embed_parts), and
    the step's tail after the blocks one more. Traced with dynamo's eager backend: what is counted is the
    graphs, not inductor's code."""
    from torch._dynamo.utils import counters

    from ttt_decode.decode import engine
    from ttt_decode.models import build

    real = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: real(fn, **{**kw, "backend": "eager"}))
    monkeypatch.setenv("TTT_DECODE_SPLIT_K", split)
    torch._dynamo.reset()
    counters.clear()
    model = build(config, inner_net="mlp_1_dual", dtype="float32", device="cpu")
    eager = model.step
    state = model.allocate_state(2)
    step = engine.compiled_step(model)
    ids = torch.tensor([3, 7])
    out = step(ids, state)
    assert [name for _, name in model.compile_regions()] == ["step"] * model.config.num_layers + ["finish_step"]
    assert counters["stats"]["unique_graphs"] == 2  # the block's step, the tail
    ref_state = model.allocate_state(2)
    torch.testing.assert_close(out, eager(ids, ref_state))
