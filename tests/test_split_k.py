"""The K-split down projection (ops.split_k): the products and their sum, the dispatcher and its switch, and
the model whose blocks pass the partial sums on (PyTorch path, and the fused kernels under TRITON_INTERPRET=1)."""

import pytest
import torch

from conftest import rel_err
from ttt_decode.errors import UserError
from ttt_decode.ops import split_k


@pytest.mark.parametrize("slices", [1, 2, 4])
def test_linear_parts_sum_to_the_product(slices):
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(5, 64, generator=g, dtype=torch.float64), torch.randn(24, 64, generator=g, dtype=torch.float64)
    parts = split_k.linear_parts(x, w, slices)
    assert parts.shape == (slices, 5, 24)
    torch.testing.assert_close(parts.sum(0), x @ w.t(), rtol=1e-12, atol=1e-12)
    k = 64 // slices
    torch.testing.assert_close(parts[-1], x[:, -k:] @ w[:, -k:].t(), rtol=1e-12, atol=1e-12)


def test_sum_parts_folds_left_in_the_given_dtype():
    t = torch.tensor([[[1e8]], [[1.0]], [[-1e8]]], dtype=torch.float32)
    assert split_k.sum_parts(t, torch.float32).item() == 0.0  # (1e8 + 1) - 1e8 in float32: 1 is lost
    assert split_k.sum_parts(t, torch.float64).item() == 1.0
    two_d = torch.ones(2, 3, dtype=torch.float16)
    assert split_k.sum_parts(two_d, torch.float32).dtype == torch.float32


def test_slices_for_follows_the_measured_table_on_cuda_only(monkeypatch):
    monkeypatch.delenv(split_k.ENV_SPLIT_K, raising=False)
    down = (2048, 5504)  # ttt-1b's down projection
    assert [split_k.slices_for(b, *down, "cuda") for b in (64, 256, 512, 1024)] == [1, 4, 2, 1]
    assert split_k.slices_for(512, *down, "cpu") == 1
    assert split_k.slices_for(512, 2048, 2048, "cuda") == 1  # a shape not measured
    out_proj = (2048, 4096)  # mamba-1.4b's
    assert [split_k.slices_for(b, *out_proj, "cuda") for b in (64, 256, 512)] == [1, 4, 1]


def test_split_k_switch(monkeypatch):
    monkeypatch.setenv(split_k.ENV_SPLIT_K, "0")
    assert split_k.slices_for(512, 2048, 5504, "cuda") == 1
    monkeypatch.setenv(split_k.ENV_SPLIT_K, "2")
    assert split_k.slices_for(3, 64, 128, "cpu") == 2
    monkeypatch.setenv(split_k.ENV_SPLIT_K, "3")
    with pytest.raises(UserError, match="128 inputs do not split into 3 slices"):
        split_k.slices_for(3, 64, 128, "cpu")
    monkeypatch.setenv(split_k.ENV_SPLIT_K, "yes")
    with pytest.raises(UserError, match="TTT_DECODE_SPLIT_K='yes' is not auto, 0 or a number of slices"):
        split_k.check_switch()


def test_bad_switch_fails_before_the_model_is_built(monkeypatch):
    from ttt_decode.models import build

    monkeypatch.setenv(split_k.ENV_SPLIT_K, "two")
    with pytest.raises(UserError, match="TTT_DECODE_SPLIT_K"):
        build("ttt-tiny", inner_net="mlp_1_dual", dtype="float32", device="cpu")
    monkeypatch.setenv(split_k.ENV_SPLIT_K, "3")  # ttt-tiny's MLP has 128 inputs to down, mamba-tiny's out_proj 128
    for name, inner in (("ttt-tiny", "mlp_1_dual"), ("mamba-tiny", "mamba_ref")):
        with pytest.raises(UserError, match="128 inputs do not split into 3 slices"):
            build(name, inner_net=inner, dtype="float32", device="cpu")


@pytest.mark.parametrize("config,inner", [("ttt-tiny", "mlp_1_dual"), ("ttt-tiny", "mlp_1_dual_triton"),
                                          ("ttt-tiny-transformer-backbone", "mlp_1_dual")])
@pytest.mark.parametrize("slices", [2, 4])
def test_model_step_with_split_down_projection(config, inner, slices, monkeypatch):
    """Forced K slices: the state says so (every layer, and the first block's pending residual in the same
    [s, B, D] form with the embedding in part 0), the step runs the down projection as one batched product of
    partial sums, the blocks add them, and the logits are those of the unsplit model to float32 rounding over
    a mini-batch boundary (the PyTorch path and the fused kernels)."""
    from ttt_decode.models import build

    ids = torch.randint(0, 500, (3, 20), generator=torch.Generator().manual_seed(2))
    P = 12  # steps from mini-batch position P (a fresh cache), across the mini-batch end at 16
    logits = {}
    for s in (0, slices):
        monkeypatch.setenv(split_k.ENV_SPLIT_K, str(s))
        torch.manual_seed(0)
        model = build(config, inner_net=inner, dtype="float32", device="cpu")
        state = model.allocate_state(3)
        assert all(ls.down_slices == max(1, s) for ls in state.layers)
        assert (state.embed_parts is None) == (s == 0)
        calls = []
        real = split_k.linear_parts
        monkeypatch.setattr(split_k, "linear_parts", lambda *a: calls.append(a[2]) or real(*a))
        state.pos.fill_(P)
        logits[s] = [model.step(ids[:, t], state) for t in range(P, ids.shape[1] - 2)]
        monkeypatch.setattr(split_k, "linear_parts", real)
        assert calls == [s] * (model.config.num_layers * (ids.shape[1] - 2 - P)) if s else not calls
        if s:
            assert torch.count_nonzero(state.embed_parts[1:]) == 0
            torch.testing.assert_close(state.embed_parts[0], model.embed(ids[:, -3]))  # the last step's
    for t, (a, b) in enumerate(zip(logits[0], logits[slices])):
        assert rel_err(b, a) < 1e-5, t


@pytest.mark.parametrize("var,value", [("TTT_DECODE_PREFILL_GRAPHS", "yes"), ("TTT_DECODE_FUSED_GATE_NORM", "2"),
                                       ("TTT_DECODE_FUSED_SWIGLU", "true"), ("TTT_DECODE_SPLIT_K", "-1"),
                                       ("TTT_DECODE_M2_DEFER_W1", "on")])
def test_every_switch_rejects_other_values_before_the_model_is_built(var, value, monkeypatch):
    """The README's switches table: each takes only its listed values; anything else is a one-line error naming the
    variable when a TTT model is built."""
    from ttt_decode.models import build
    from ttt_decode.ops.ttt_mlp import naive

    monkeypatch.setenv(var, value)
    if var == "TTT_DECODE_M2_DEFER_W1":  # read when the module is imported
        monkeypatch.setattr(naive, "DEFER_W1_PROBLEM", naive._read_switch(var, "0")[1])
    with pytest.raises(UserError, match=var) as e:
        build("ttt-tiny", inner_net="mlp_2_dual", dtype="float32", device="cpu")
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("inner", ["mamba_ref", "mamba_triton"])
def test_mamba_step_with_split_out_proj(inner, monkeypatch):
    """Forced K slices for Mamba's out_proj: the state says so, every mixer's step returns partial sums that
    add_rms_norm adds, and the logits are the unsplit model's to float32 rounding."""
    from ttt_decode.models import build

    ids = torch.randint(0, 500, (3, 8), generator=torch.Generator().manual_seed(4))
    logits = {}
    for s in (0, 4):
        monkeypatch.setenv(split_k.ENV_SPLIT_K, str(s))
        torch.manual_seed(0)
        model = build("mamba-tiny", inner_net=inner, dtype="float32", device="cpu")
        state = model.allocate_state(3)
        assert state.out_slices == max(1, s)
        calls = []
        real = split_k.linear_parts
        monkeypatch.setattr(split_k, "linear_parts", lambda *a: calls.append(a[2]) or real(*a))
        logits[s] = [model.step(ids[:, t], state) for t in range(ids.shape[1])]
        monkeypatch.setattr(split_k, "linear_parts", real)
        assert calls == ([s] * model.config.n_layer * ids.shape[1] if s else [])
    for t, (a, b) in enumerate(zip(logits[0], logits[4])):
        assert rel_err(b, a) < 1e-5, t


def test_bench_record_names_the_split_that_ran(tmp_path, monkeypatch):
    """A cell's record says what the step ran with (step_options), not only which switches were set: here the
    forced slices, for TTT's down projection and Mamba's out_proj."""
    from ttt_decode.bench.records import read_jsonl
    from ttt_decode.cli import main

    monkeypatch.setenv(split_k.ENV_SPLIT_K, "2")
    for name in ("ttt-tiny", "mamba-tiny"):
        assert main(["bench", "--logdir", str(tmp_path), "--model-name", name, "--batch", "2", "--genlen", "4",
                     "--device", "cpu", "--repeats", "1", "--dtype", "float32"]) == 0
    ttt, mamba = read_jsonl(str(tmp_path / "results.jsonl"))
    assert ttt["step_options"]["down_slices"] == 2 and mamba["step_options"] == {"out_slices": 2}
    assert ttt["ttt_decode_env"] == {"TTT_DECODE_SPLIT_K": "2"}
