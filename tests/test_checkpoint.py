"""Published TTT checkpoints (ttt.py's layout): save -> load round trips, the conventions that are easy to get
wrong (each against a formula written here), and bad checkpoints failing with one line naming the culprit.

The published implementation itself cannot live in this repository: the comparison of logits against it
(checkpoints written by each side, loaded by the other) runs outside, against a copy of ttt.py (issue 7).
"""

import json
import math
import os
import types

import pytest
import torch

from conftest import rel_err
from ttt_decode import models
from ttt_decode.cli import main
from ttt_decode.configs import get_config
from ttt_decode.decode import teacher_force
from ttt_decode.errors import UserError
from ttt_decode.models.checkpoint import from_pretrained, save_pretrained
from ttt_decode.models.ttt_convert import expected_published_keys

safetensors_torch = pytest.importorskip("safetensors.torch")

BACKBONES = ["ttt-tiny", "ttt-tiny-transformer-backbone"]
KINDS = [("linear", "mlp_1_dual"), ("mlp", "mlp_2_dual")]
S = "model.layers.0.seq_modeling_block."


def ids(B, N, seed=0, vocab=500):
    return torch.randint(0, vocab, (B, N), generator=torch.Generator().manual_seed(seed))


def tiny(name, inner_net, seed=0, **overrides):
    """float64 tiny model with every parameter perturbed; vocab 504 = its padded size unless overridden."""
    cfg = get_config(name, **{"vocab_size": 504, **overrides})
    return models.randomize_(models.build(cfg, inner_net=inner_net, dtype=torch.float64, device="cpu"), seed=seed)


def one_line(excinfo):
    msg = str(excinfo.value)
    assert "\n" not in msg and "Traceback" not in msg, msg
    return msg


# ---- round trips ----
@pytest.mark.parametrize("fmt", ["safetensors", "bin", "sharded-safetensors", "sharded-bin"])
@pytest.mark.parametrize("kind,inner_net", KINDS, ids=["M1", "M2"])
@pytest.mark.parametrize("name", BACKBONES, ids=["mamba-backbone", "transformer-backbone"])
def test_save_load_roundtrip_identical_logits(tmp_path, name, kind, inner_net, fmt):
    model = tiny(name, inner_net)
    path = save_pretrained(model, tmp_path / "ckpt", safe_serialization="bin" not in fmt,
                           max_shard_size="20KB" if fmt.startswith("sharded") else None)
    files = os.listdir(path)
    index = "model.safetensors.index.json" if "bin" not in fmt else "pytorch_model.bin.index.json"
    assert (index in files) == fmt.startswith("sharded") and len(files) > (3 if fmt.startswith("sharded") else 1)
    loaded = from_pretrained(path, dtype="float64", device="cpu")
    assert loaded.inner_net == inner_net and loaded.kind == kind
    assert loaded.weights_source == f"checkpoint:{os.path.abspath(path)}"
    assert loaded.checkpoint_config["ttt_layer_type"] == kind
    x = ids(2, 37)
    assert torch.equal(loaded(x), model(x))
    assert torch.equal(teacher_force(loaded, x, 20), teacher_force(model, x, 20))


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_saved_files_have_published_names_and_shapes(tmp_path, tied):
    model = tiny("ttt-tiny", "mlp_2_dual", tie_word_embeddings=tied)
    path = save_pretrained(model, tmp_path / "ckpt")
    cfg = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert cfg["model_type"] == "ttt" and cfg["architectures"] == ["TTTForCausalLM"]
    assert {cfg[k] for k in ("pre_conv", "share_qk", "use_gate")} == {True} and cfg["tie_word_embeddings"] == tied
    assert (cfg["num_hidden_layers"], cfg["num_attention_heads"], cfg["ttt_layer_type"]) == (2, 4, "mlp")
    assert "num_layers" not in cfg and "pad_vocab_multiple" not in cfg
    tensors = safetensors_torch.load_file(os.path.join(path, "model.safetensors"))
    want = expected_published_keys(model.config, mlp=True)
    assert {k: tuple(v.shape) for k, v in tensors.items()} == want
    # The tied head is not written (transformers ties it again on load), an untied one is.
    assert ("lm_head.weight" in tensors) == (not tied)
    assert torch.equal(tensors[S + "learnable_ttt_lr_bias"], model.layers[0].ttt.lr_bias.unsqueeze(1))


def test_padded_vocabulary_rows_are_dropped(tmp_path):
    model = tiny("ttt-tiny", "mlp_1_dual", vocab_size=500)  # padded to 504 in our layout
    loaded = from_pretrained(save_pretrained(model, tmp_path / "c"), dtype="float64", device="cpu")
    assert loaded.config.vocab_size == loaded.config.padded_vocab_size == 500
    x = ids(2, 21)
    # Same weights; only the LM head matmul's blocking changes with the row count.
    assert rel_err(loaded(x), model(x)[..., :500]) < 1e-14


def test_inner_net_picks_the_implementation_of_the_checkpoint_kind(tmp_path):
    path = save_pretrained(tiny("ttt-tiny", "mlp_2_dual"), tmp_path / "c")
    dual = from_pretrained(path, dtype="float64", device="cpu")
    primal = from_pretrained(path, inner_net="mlp_2_primal", dtype="float64", device="cpu")
    assert (dual.inner_net, primal.inner_net) == ("mlp_2_dual", "mlp_2_primal")
    x = ids(2, 30, seed=1)
    assert rel_err(teacher_force(primal, x, 3), teacher_force(dual, x, 3)) < 1e-10
    with pytest.raises(UserError, match="inner net 'mlp_1_dual' is for TTT-Linear but .*config.json has "
                                        "ttt_layer_type 'mlp'; pick mlp_2_dual") as e:
        from_pretrained(path, inner_net="mlp_1_dual", device="cpu")
    one_line(e)


def test_dtype_cast_and_kept(tmp_path):
    model = tiny("ttt-tiny", "mlp_1_dual")
    path = save_pretrained(model.to(torch.bfloat16), tmp_path / "c")
    assert from_pretrained(path, dtype=None, device="cpu").dtype == torch.bfloat16
    loaded = from_pretrained(path, dtype="float32", device="cpu")
    assert loaded.dtype == torch.float32
    assert torch.equal(loaded.layers[1].ttt.W1, model.layers[1].ttt.W1.float())


def test_missing_flag_fields_take_the_published_defaults(tmp_path):
    """transformers omits fields equal to defaults; ttt.py's defaults are pre_conv/share_qk/use_gate false, tied."""
    model = tiny("ttt-tiny-transformer-backbone", "mlp_1_dual")
    path = save_pretrained(model, tmp_path / "c")
    cfg_file = tmp_path / "c" / "config.json"
    cfg = json.loads(cfg_file.read_text())
    for key in ("pre_conv", "share_qk", "use_gate", "tie_word_embeddings", "ttt_layer_type", "mini_batch_size"):
        del cfg[key]
    cfg.update(rope_scaling=None, scan_checkpoint_group_size=4, torch_dtype="float64", bos_token_id=0)
    cfg_file.write_text(json.dumps(cfg))
    loaded = from_pretrained(path, dtype="float64", device="cpu")
    c = loaded.config
    assert (c.pre_conv, c.share_qk, c.use_gate, c.tie_word_embeddings, c.mini_batch_size) == (False,) * 3 + (True, 16)
    assert loaded.kind == "linear"
    x = ids(1, 19)
    assert torch.equal(loaded(x), model(x))


# ---- conventions, each against a formula written here ----
HC = dict(vocab_size=40, hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=2,
          rms_norm_eps=1e-6, rope_theta=500.0, mini_batch_size=16, ttt_base_lr=0.37, conv_kernel=4,
          hidden_act="silu", pretraining_tp=1, tie_word_embeddings=True)


def handwritten_checkpoint(tmp_path, backbone: bool, layer_type="linear", seed=0, edit=None):
    """A published-layout checkpoint written directly (names and shapes from ttt.py), random weights."""
    cfg = dict(HC, model_type="ttt", ttt_layer_type=layer_type, pre_conv=backbone, share_qk=backbone, use_gate=backbone)
    config = get_config("ttt-tiny", hidden_size=32, num_layers=1, num_heads=2, intermediate_size=48,
                               vocab_size=40, pre_conv=backbone, share_qk=backbone, use_gate=backbone)
    gen = torch.Generator().manual_seed(seed)
    tensors = {n: 0.5 * torch.randn(shape, generator=gen, dtype=torch.float64)
               for n, shape in expected_published_keys(config, layer_type == "mlp").items()}
    tensors["model.embed_tokens.weight"] *= 6  # residual RMS far from 1: normed and raw inputs differ
    for n in tensors:
        if n.endswith("norm.weight") or n.endswith("ttt_norm_weight"):
            tensors[n] += 1.0
    if edit:
        edit(tensors)
    d = tmp_path / f"hand{seed}{backbone}{layer_type}"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(cfg))
    safetensors_torch.save_file(tensors, str(d / "model.safetensors"))
    return d, tensors


class Capture:
    """Records the inputs and outputs of the inner-loop op of layer 0, in prefill and in decode steps."""

    def __init__(self, model):
        layer = model.layers[0].ttt
        self.prefill, self.steps = [], []
        op_prefill, op_step = layer.op.prefill, layer.decode_step

        def prefill(q, k, v, eta, c, *rest, **kw):
            out = op_prefill(q, k, v, eta, c, *rest, **kw)
            self.prefill.append(dict(q=q.clone(), k=k.clone(), eta=eta.clone(), c=c.clone(), z=out.clone()))
            return out

        def step(q, k, v, eta, c, *rest, **kw):
            out = op_step(q, k, v, eta, c, *rest, **kw)
            self.steps.append(dict(q=q.clone(), k=k.clone(), eta=eta.clone(), c=c.clone(), z=out.clone()))
            return out

        layer.op = types.SimpleNamespace(prefill=prefill)
        layer.decode_step = step


def rms_normed(h, w, eps=1e-6):
    return h / torch.sqrt(h.pow(2).mean(-1, keepdim=True) + eps) * w


def heads(x, H=2):
    return x.unflatten(-1, (H, -1))  # [..., H, f]


def test_rotary_interleaved_pairs_at_position_t_mod_minibatch(tmp_path):
    d, t = handwritten_checkpoint(tmp_path, backbone=False)
    model = from_pretrained(d, dtype="float64", device="cpu")
    cap = Capture(model)
    x_ids = ids(1, 20, vocab=40)
    teacher_force(model, x_ids, 17)  # tokens 0..16 prefilled, 17.. decoded one step at a time
    model(x_ids)  # full forward: all 20 tokens in one prefill
    x = rms_normed(t["model.embed_tokens.weight"][x_ids[0]], t["model.layers.0.seq_norm.weight"])  # [N, D]
    f, theta, T = 16, 500.0, 17
    for proj, got_step, got_full in (("q", cap.steps[0]["q"], cap.prefill[1]["q"]),
                                     ("k", cap.steps[0]["k"], cap.prefill[1]["k"])):
        raw = heads(x[T] @ t[S + f"{proj}_proj.weight"].T)  # [H, f] before rotation
        want = torch.empty_like(raw)
        for j in range(f // 2):
            # t = 17, b = 16: position 1 inside the mini-batch, angle 1 * theta^(-2j/f) on (x[2j], x[2j+1]).
            a = 1 * theta ** (-2 * j / f)
            want[:, 2 * j] = raw[:, 2 * j] * math.cos(a) - raw[:, 2 * j + 1] * math.sin(a)
            want[:, 2 * j + 1] = raw[:, 2 * j + 1] * math.cos(a) + raw[:, 2 * j] * math.sin(a)
        assert rel_err(got_step[0], want) < 1e-6, proj  # angles are float32, as in ttt.py
        assert rel_err(got_full[0, :, T], want) < 1e-6, proj
        # Not vacuous: the absolute position (17), or pairs of halves (x[j], x[j + f/2]), give other values.
        a17 = 17 * theta ** (-2 * torch.arange(f // 2, dtype=torch.float64) / f)
        wrong = torch.stack([raw[:, 0::2] * a17.cos() - raw[:, 1::2] * a17.sin(),
                             raw[:, 1::2] * a17.cos() + raw[:, 0::2] * a17.sin()], -1).flatten(-2)
        a1 = theta ** (-2 * torch.arange(f // 2, dtype=torch.float64) / f)
        halves = torch.cat([raw[:, :f // 2] * a1.cos() - raw[:, f // 2:] * a1.sin(),
                            raw[:, f // 2:] * a1.cos() + raw[:, :f // 2] * a1.sin()], -1)
        assert rel_err(wrong, want) > 1e-2 and rel_err(halves, want) > 1e-2


def test_learning_rate_per_head_from_the_normed_input(tmp_path):
    d, t = handwritten_checkpoint(tmp_path, backbone=False)
    model = from_pretrained(d, dtype="float64", device="cpu")
    cap = Capture(model)
    x_ids = ids(2, 21, seed=3, vocab=40)
    teacher_force(model, x_ids, 18)
    emb = t["model.embed_tokens.weight"][x_ids]  # [B, N, D]: the residual entering layer 0
    x = rms_normed(emb, t["model.layers.0.seq_norm.weight"])
    w, b = t[S + "learnable_ttt_lr_weight"], t[S + "learnable_ttt_lr_bias"]  # [H, 1, D], [H, 1]
    want = torch.empty(2, 2, 21, dtype=torch.float64)  # [B, H, N]
    raw = torch.empty_like(want)
    for h in range(2):
        want[:, h] = 0.37 * torch.sigmoid(x @ w[h, 0] + b[h, 0]) / 16
        raw[:, h] = 0.37 * torch.sigmoid(emb @ w[h, 0] + b[h, 0]) / 16
    got = torch.cat([cap.prefill[0]["eta"], torch.stack([s["eta"] for s in cap.steps], -1)], -1)
    assert got.shape == (2, 2, 21)
    assert rel_err(got, want) < 1e-13
    assert rel_err(raw, want) > 1e-2  # the un-normed residual would give something else


def test_token_coefficients_clamped_at_zero(tmp_path):
    def negative_at_2_and_9(t):
        t[S + "learnable_token_idx"] = torch.linspace(-0.05, 0.3, 16, dtype=torch.float64)
        t[S + "learnable_token_idx"][2] = -0.6  # 1/3 - 0.6 < 0
        t[S + "learnable_token_idx"][9] = -0.5  # 1/10 - 0.5 < 0

    d, t = handwritten_checkpoint(tmp_path, backbone=False, edit=negative_at_2_and_9)
    model = from_pretrained(d, dtype="float64", device="cpu")
    cap = Capture(model)
    model(ids(1, 16, seed=5, vocab=40))
    li = t[S + "learnable_token_idx"]
    want = torch.tensor([max(0.0, 1 / (i + 1) + li[i].item()) for i in range(16)], dtype=torch.float64)
    got = cap.prefill[0]["c"]
    assert got[2] == 0 and got[9] == 0
    assert torch.allclose(got, want, rtol=1e-6, atol=0)  # 1/(i+1) is float32, as in ttt.py
    # Through the inner loop (M1): with c_2 = 0 the token at position 2 sees the mini-batch start weights only,
    # z = q + LN(q W1 + b1); at position 3 (c_3 > 0) the in-mini-batch update changes it.
    q, z = cap.prefill[0]["q"][0], cap.prefill[0]["z"][0]  # [H, N, f]
    W1, b1 = t[S + "W1"], t[S + "b1"]  # [H, f, f], [H, 1, f]
    gamma, beta = t[S + "ttt_norm_weight"].unsqueeze(1), t[S + "ttt_norm_bias"].unsqueeze(1)  # [H, 1, f]

    def no_update(i):
        y = q[:, i:i + 1] @ W1 + b1  # [H, 1, f]
        mu, var = y.mean(-1, keepdim=True), y.var(-1, unbiased=False, keepdim=True)
        return q[:, i] + ((y - mu) / torch.sqrt(var + 1e-6) * gamma + beta)[:, 0]

    assert rel_err(z[:, 2], no_update(2)) < 1e-13
    assert rel_err(z[:, 3], no_update(3)) > 1e-3


def gelu_tanh(u):
    return 0.5 * u * (1 + torch.tanh(math.sqrt(2 / math.pi) * (u + 0.044715 * u ** 3)))


def layer_norm(z, w, b, eps=1e-6):
    mu, var = z.mean(-1, keepdim=True), z.var(-1, unbiased=False, keepdim=True)
    return (z - mu) / torch.sqrt(var + eps) * w + b


@pytest.mark.parametrize("layer_type", ["linear", "mlp"])
def test_post_norm_then_gate(tmp_path, layer_type):
    d, t = handwritten_checkpoint(tmp_path, backbone=True, layer_type=layer_type)
    model = from_pretrained(d, dtype="float64", device="cpu")
    cap = Capture(model)
    seen = {}
    block = model.layers[0]
    block.seq_norm.register_forward_hook(lambda m, i, o: seen.__setitem__("x", o))
    block.ttt.o_proj.register_forward_hook(lambda m, i, o: seen.__setitem__("out", o))
    model(ids(2, 19, seed=6, vocab=40))
    x, z = seen["x"], cap.prefill[0]["z"].transpose(1, 2).flatten(2)  # [B, N, D] each
    g = gelu_tanh(x @ t[S + "g_proj.weight"].T)
    normed = layer_norm(z, t[S + "post_norm.weight"], t[S + "post_norm.bias"])
    want = (g * normed) @ t[S + "o_proj.weight"].T
    assert rel_err(seen["out"], want) < 1e-13
    wrong = layer_norm(g * z, t[S + "post_norm.weight"], t[S + "post_norm.bias"]) @ t[S + "o_proj.weight"].T
    assert rel_err(wrong, want) > 1e-2


def test_shared_qk_projection_then_separate_causal_convs(tmp_path):
    d, t = handwritten_checkpoint(tmp_path, backbone=True)
    model = from_pretrained(d, dtype="float64", device="cpu")
    cap = Capture(model)
    seen = {}
    model.layers[0].seq_norm.register_forward_hook(lambda m, i, o: seen.__setitem__("x", o))
    model(ids(1, 20, seed=7, vocab=40))
    q0 = seen["x"][0] @ t[S + "q_proj.weight"].T  # [N, D]: one projection for q and k
    T = 16  # position 16 % 16 = 0: the rotary angle is 0, so q and k are the conv outputs themselves
    for conv, name in (("conv_q", "q"), ("conv_k", "k")):
        w, b = t[S + f"{conv}.weight"][:, 0], t[S + f"{conv}.bias"]  # [D, W], [D]
        # nn.Conv1d with padding W-1, first N outputs: tap W-1 multiplies the newest input.
        want = b + sum(w[:, j] * q0[T - 3 + j] for j in range(4))
        assert rel_err(cap.prefill[0][name][0, :, T].flatten(), want) < 1e-13, name


# ---- bad checkpoints: one line naming the file, field or tensor; nothing allocated first ----
def _swap(t, a, b):
    t[a], t[b] = t[b], t[a]


def _rename(t, a, b):
    t[b] = t.pop(a)


L = "model.layers.0."


@pytest.mark.parametrize("edit,message", [
    (lambda t: _swap(t, S + "q_proj.weight", L + "mlp.gate_proj.weight"),
     r"model.layers.0.mlp.gate_proj.weight' has shape \(64, 64\), expected \(128, 64\)"),
    (lambda t: _swap(t, S + "W1", S + "W2"), r"seq_modeling_block.W1' has shape \(4, 64, 16\), expected \(4, 16, 64\)"),
    (lambda t: _swap(t, S + "learnable_ttt_lr_weight", S + "conv_q.weight"),
     r"seq_modeling_block.conv_q.weight' has shape \(4, 1, 64\), expected \(64, 1, 4\)"),
    (lambda t: _rename(t, S + "W1", S + "W_1"),
     r"unexpected tensor 'model.layers.0.seq_modeling_block.W_1'.*'model.layers.0.seq_modeling_block.W1' is missing"),
    (lambda t: t.pop("model.norm.weight"), r"missing tensor 'model.norm.weight'"),
    (lambda t: t.update({"model.layers.2.seq_norm.weight": torch.ones(64)}), r"num_hidden_layers 2"),
    (lambda t: t.update({S + "k_proj.weight": torch.ones(64, 64)}),
     r"unexpected tensor '.*k_proj.weight'.*share_qk true; the tensor belongs to a model with share_qk false"),
    (lambda t: t.pop(S + "g_proj.weight"), r"missing tensor '.*g_proj.weight'.*says use_gate true, which needs it"),
    (lambda t: t.update({"lm_head.weight": t["model.embed_tokens.weight"] + 1}), r"lm_head.weight differs from"),
    (lambda t: t.update({S + "b1": t[S + "b1"].squeeze(1)}), r"b1' has shape \(4, 64\), expected \(4, 1, 64\)"),
    (lambda t: t.update({"model.norm.weight": t["model.norm.weight"].long()}), r"has dtype torch.int64"),
], ids=["shuffled-proj", "shuffled-W1-W2", "shuffled-lr-conv", "renamed", "missing", "extra-layer",
        "other-backbone", "missing-gate", "untied-head", "squeezed", "int-dtype"])
def test_bad_tensors_name_the_tensor(tmp_path, edit, message, monkeypatch):
    path = save_pretrained(tiny("ttt-tiny", "mlp_2_dual"), tmp_path / "c")
    fp = os.path.join(path, "model.safetensors")
    tensors = safetensors_torch.load_file(fp)
    edit(tensors)
    safetensors_torch.save_file(tensors, fp)

    def no_allocation(*a, **k):
        raise AssertionError("the model was allocated before the checkpoint was checked")

    monkeypatch.setattr("ttt_decode.models.ttt.TTTLM.__init__", no_allocation)
    with pytest.raises(UserError, match=message) as e:
        from_pretrained(path, dtype="float64", device="cpu")
    assert "model.safetensors" in one_line(e) or "missing tensor" in str(e.value)


def test_layer_type_mismatch_is_named(tmp_path):
    path = save_pretrained(tiny("ttt-tiny", "mlp_2_dual"), tmp_path / "c")
    cfg = json.loads((tmp_path / "c" / "config.json").read_text())
    (tmp_path / "c" / "config.json").write_text(json.dumps(dict(cfg, ttt_layer_type="linear")))
    with pytest.raises(UserError, match="ttt_layer_type 'linear'; the tensor belongs to a TTT-MLP model") as e:
        from_pretrained(path, device="cpu")
    one_line(e)


def test_tied_head_saved_instead_of_the_embedding_loads(tmp_path):
    model = tiny("ttt-tiny", "mlp_1_dual")
    path = save_pretrained(model, tmp_path / "c")
    fp = os.path.join(path, "model.safetensors")
    tensors = safetensors_torch.load_file(fp)
    _rename(tensors, "model.embed_tokens.weight", "lm_head.weight")
    safetensors_torch.save_file(tensors, fp)
    x = ids(1, 9)
    assert torch.equal(from_pretrained(path, dtype="float64", device="cpu")(x), model(x))


@pytest.mark.parametrize("change,message", [
    ({"hidden_act": "gelu"}, "config.json: hidden_act 'gelu' is not supported"),
    ({"pretraining_tp": 2}, "config.json: pretraining_tp 2 is not supported; set it to 1"),
    ({"rope_scaling": {"type": "linear", "factor": 2.0}}, "config.json: rope_scaling .* is not supported"),
    ({"num_key_value_heads": 2}, "config.json: unsupported field 'num_key_value_heads'"),
    ({"ttt_layer_type": "rnn"}, "config.json: ttt_layer_type 'rnn' is not supported"),
    ({"hidden_size": "64"}, "config.json: hidden_size must be an integer, got '64'"),
    ({"pre_conv": "yes"}, "config.json: pre_conv must be true or false"),
    ({"num_attention_heads": 3}, "config.json: hidden_size 64 must split into num_attention_heads 3"),
    ({"model_type": "llama"}, "config.json: model_type 'llama' is not supported"),
    ({"mini_batch_size": 0}, "config.json: mini_batch_size must be >= 1"),
    ({"ttt_base_lr": -1.0}, "config.json: ttt_base_lr must be > 0"),
], ids=lambda v: next(iter(v)) if isinstance(v, dict) else None)
def test_unsupported_config_fields_are_named(tmp_path, change, message):
    path = save_pretrained(tiny("ttt-tiny", "mlp_1_dual"), tmp_path / "c")
    cfg_file = tmp_path / "c" / "config.json"
    cfg_file.write_text(json.dumps({**json.loads(cfg_file.read_text()), **change}))
    with pytest.raises(UserError, match=message) as e:
        from_pretrained(path, device="cpu")
    one_line(e)


def test_bad_files_are_named(tmp_path):
    with pytest.raises(UserError, match="checkpoint directory .*nowhere not found") as e:
        from_pretrained(tmp_path / "nowhere", device="cpu")
    one_line(e)
    path = save_pretrained(tiny("ttt-tiny", "mlp_1_dual"), tmp_path / "c")
    with pytest.raises(UserError, match="model.safetensors is a file; pass the checkpoint directory"):
        from_pretrained(os.path.join(path, "model.safetensors"), device="cpu")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no config.json in"):
        from_pretrained(tmp_path / "empty", device="cpu")
    fp = os.path.join(path, "model.safetensors")
    data = open(fp, "rb").read()
    open(fp, "wb").write(data[: len(data) // 2])
    with pytest.raises(UserError, match="model.safetensors could not be read as safetensors") as e:
        from_pretrained(path, device="cpu")
    one_line(e)
    os.remove(fp)
    with pytest.raises(UserError, match="no weights in .*: expected model.safetensors or pytorch_model.bin"):
        from_pretrained(path, device="cpu")
    open(os.path.join(path, "pytorch_model.bin"), "wb").write(b"not a checkpoint")
    with pytest.raises(UserError, match="pytorch_model.bin could not be read with torch.load\\(weights_only=True\\)"):
        from_pretrained(path, device="cpu")
    torch.save({"model.norm.weight": 3}, os.path.join(path, "pytorch_model.bin"))
    with pytest.raises(UserError, match="pytorch_model.bin must hold a flat state dict"):
        from_pretrained(path, device="cpu")
    (tmp_path / "c" / "config.json").write_text("{ not json")
    with pytest.raises(UserError, match="config.json is not valid JSON"):
        from_pretrained(path, device="cpu")


def test_unreadable_file_is_named(tmp_path, monkeypatch):
    path = save_pretrained(tiny("ttt-tiny", "mlp_1_dual"), tmp_path / "c")
    weights = os.path.join(path, "model.safetensors")
    os.chmod(weights, 0)
    # root reads files whatever their mode: make the access check see what a normal user would.
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if os.path.abspath(p) == os.path.abspath(weights)
                        else real_access(p, mode))
    with pytest.raises(UserError, match="cannot read .*model.safetensors \\(permission denied\\)"):
        from_pretrained(path, device="cpu")


def test_bad_shards_are_named(tmp_path):
    path = save_pretrained(tiny("ttt-tiny", "mlp_1_dual"), tmp_path / "c", max_shard_size="20KB")
    index_file = os.path.join(path, "model.safetensors.index.json")
    index = json.loads(open(index_file).read())
    shard = index["weight_map"]["model.norm.weight"]
    moved = os.path.join(path, shard + ".away")
    os.rename(os.path.join(path, shard), moved)
    with pytest.raises(UserError, match=f"shard '{shard}' listed in .*index.json is not a file") as e:
        from_pretrained(path, device="cpu")
    one_line(e)
    os.rename(moved, os.path.join(path, shard))
    other = index["weight_map"]["model.embed_tokens.weight"]
    json.dump({**index, "weight_map": {**index["weight_map"], "model.norm.weight": other}}, open(index_file, "w"))
    with pytest.raises(UserError, match="tensor 'model.norm.weight' is not listed for this shard"):
        from_pretrained(path, device="cpu")
    wm = dict(index["weight_map"], **{"model.extra.weight": shard})
    json.dump({**index, "weight_map": wm}, open(index_file, "w"))
    with pytest.raises(UserError, match="tensor 'model.extra.weight' is listed in model.safetensors.index.json but "
                                        "missing from its shard"):
        from_pretrained(path, device="cpu")


def test_save_refuses_to_mix_with_an_existing_checkpoint(tmp_path):
    model = tiny("ttt-tiny", "mlp_1_dual")
    path = save_pretrained(model, tmp_path / "c", max_shard_size="20KB")
    with pytest.raises(UserError, match="already holds a checkpoint .*--overwrite"):
        save_pretrained(model, path)
    # Overwriting removes the old shards and index, so the new single file is what loads.
    save_pretrained(model, path, overwrite=True)
    assert sorted(os.listdir(path)) == ["config.json", "model.safetensors"]
    with pytest.raises(UserError, match="save_pretrained writes TTT models"):
        save_pretrained(models.build("mamba-tiny", dtype="float32", device="cpu", inner_net="mamba_ref"),
                        tmp_path / "m")


def test_mamba_config_goes_to_the_mamba_loader(tmp_path):
    from ttt_decode.models.mamba import MambaLM
    from ttt_decode.models.mamba_checkpoint import save_mamba_checkpoint

    model = models.build("mamba-tiny", dtype="float32", device="cpu", inner_net="mamba_ref")
    path = save_mamba_checkpoint(model, tmp_path / "m", safetensors=True)
    loaded = models.load_model(str(path), inner_net="mamba_ref", dtype="float32", device="cpu")
    assert isinstance(loaded, MambaLM) and loaded.checkpoint_config["d_model"] == 64
    x = ids(1, 6)
    assert torch.equal(loaded(x), model(x))


# ---- command line ----
def test_convert_then_generate_from_the_directory(tmp_path, capsys):
    out = tmp_path / "m1"
    assert main(["convert", "--model-name", "ttt-tiny-transformer-backbone", "--inner_net", "mlp_1_dual",
                 "--out", str(out), "--seed", "3"]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["ttt_layer_type"], cfg["pre_conv"], cfg["dtype"]) == ("linear", False, "float32")
    assert "TTT-Linear (M1), Transformer backbone" in capsys.readouterr().out
    assert main(["generate", "--model-name", str(out), "--device", "cpu", "--genlen", "4", "--batch", "2",
                 "--inner_net", "mlp_1_primal"]) == 0
    assert "tokens/s" in capsys.readouterr().out
    assert main(["convert", "--model-name", str(out), "--out", str(tmp_path / "m1-64"), "--dtype", "float64",
                 "--max-shard-size", "30KB", "--verify"]) == 0
    assert "weights equal" in capsys.readouterr().out
    reloaded = models.load_model(str(tmp_path / "m1-64"), dtype=None, device="cpu")
    assert reloaded.dtype == torch.float64 and reloaded.inner_net == "mlp_1_dual"


@pytest.mark.parametrize("argv,needle", [
    (["generate", "--model-name", "./no/such/dir", "--device", "cpu"], "checkpoint directory ./no/such/dir not found"),
    (["generate", "--model-name", "ckpts/missing", "--device", "cpu"], "checkpoint directory ckpts/missing not found"),
    (["convert", "--model-name", "mamba-tiny", "--out", "unused"], "mamba-tiny is a mamba model"),
    (["convert", "--model-name", "ttt-tiny", "--out", "x", "--max-shard-size", "lots"], "shard size 'lots'"),
])
def test_cli_errors_are_one_line(capsys, argv, needle):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and "\n" not in err and "Traceback" not in err


def test_cli_refuses_to_overwrite_without_the_flag(tmp_path, capsys):
    out = str(tmp_path / "c")
    assert main(["convert", "--model-name", "ttt-tiny", "--out", out]) == 0
    assert main(["convert", "--model-name", "ttt-tiny", "--out", out]) == 2
    assert "already holds a checkpoint" in capsys.readouterr().err
    assert main(["convert", "--model-name", "ttt-tiny", "--out", out, "--overwrite", "--seed", "1"]) == 0
    assert main(["convert", "--model-name", out, "--out", out]) == 2
    assert "is the source checkpoint" in capsys.readouterr().err
