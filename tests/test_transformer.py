"""Transformer baseline: decode = forward, the decode-attention kernel = its reference, and the model
equals transformers' LlamaForCausalLM with the same weights."""

import pytest
import torch

from conftest import rel_err
from ttt_decode.configs import get_config
from ttt_decode.decode import teacher_force
from ttt_decode.errors import UserError
from ttt_decode.models import randomize_
from ttt_decode.models.transformer import TransformerLM, hf_llama_config_kwargs, hf_llama_state_dict
from ttt_decode.ops.attention import decode_attention
from ttt_decode.ops.kernel_op import interpreter_problem


def tiny(impl="attn_ref", dtype=torch.float64):
    torch.manual_seed(0)
    return randomize_(TransformerLM(get_config("llama-tiny"), impl, dtype=dtype, device="cpu").eval())


@pytest.mark.parametrize("n_prompt", [1, 9, 30])
def test_prefill_then_decode_equals_forward(n_prompt):
    model = tiny()
    ids = torch.randint(0, 500, (2, 31), generator=torch.Generator().manual_seed(1))
    assert rel_err(teacher_force(model, ids, n_prompt), model(ids)) < 1e-12


# Triton 3.6's interpreter with numpy >= 2.4 cannot run the attention kernel (a known combination: the
# kernel refuses it in one line, tested below); the kernel tests run everywhere else.
needs_working_interpreter = pytest.mark.skipif(
    not torch.cuda.is_available() and interpreter_problem() is not None, reason="Triton 3.6 interpreter + numpy >= 2.4")


def test_known_bad_interpreter_is_one_line_error(monkeypatch):
    import ttt_decode.ops.kernel_op as kernel_op

    monkeypatch.setattr(kernel_op, "interpreting", lambda: True)
    monkeypatch.setattr(kernel_op, "interpreter_problem", lambda: "the Triton 3.6.0 interpreter cannot run ...")
    q, k, v = torch.randn(1, 1, 16), torch.randn(1, 1, 8, 16), torch.randn(1, 1, 8, 16)
    with pytest.raises(UserError, match="interpreter cannot run"):
        decode_attention(q, k, v, torch.tensor([3]), impl="triton")


@needs_working_interpreter
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("n", [1, 63, 64, 150])
def test_decode_attention_kernel_matches_reference(dtype, n):
    g = torch.Generator().manual_seed(n)
    q, k, v = (torch.randn(shape, generator=g).to(dtype) for shape in ((2, 3, 16), (2, 3, 160, 16), (2, 3, 160, 16)))
    n_valid = torch.tensor([n])
    ref = decode_attention(q.double(), k.double(), v.double(), n_valid)
    torch_err = rel_err(decode_attention(q, k, v, n_valid), ref)
    out = decode_attention(q, k, v, n_valid, impl="triton")
    assert out.dtype == dtype
    assert rel_err(out, ref) <= max(2 * torch_err, 1e-6 if dtype == torch.float32 else 1e-3)


@needs_working_interpreter
def test_rows_past_the_position_are_not_read():
    q, k, v = (torch.randn(s) for s in ((1, 2, 16), (1, 2, 64, 16), (1, 2, 64, 16)))
    n = torch.tensor([10])
    k2, v2 = k.clone(), v.clone()
    k2[:, :, 10:], v2[:, :, 10:] = float("nan"), float("nan")
    assert torch.equal(decode_attention(q, k, v, n, impl="triton"), decode_attention(q, k2, v2, n, impl="triton"))


# Every launch shape the kernel module offers: the one-pass launch, and splits of the rows over 2 to 16
# programs (flash-decoding) with blocks small enough that some splits are empty at short contexts. The
# first four are every configuration pick_config can choose (checked below).
LAUNCH_CONFIGS = [{}, {"splits": 2}, {"num_warps": 1, "splits": 4}, {"splits": 8}, {"num_warps": 4},
                  {"splits": 4, "BLOCK_T": 16}, {"splits": 16, "BLOCK_T": 16, "num_warps": 2},
                  {"splits": 8, "BLOCK_T": 128, "num_warps": 8}, {"BLOCK_T": 32, "num_warps": 1, "splits": 8},
                  {"BLOCK_T": 16, "num_warps": 2}]


@needs_working_interpreter
@pytest.mark.parametrize("config", LAUNCH_CONFIGS, ids=lambda c: "-".join(f"{k}{v}" for k, v in c.items()) or "default")
@pytest.mark.parametrize("n", [1, 17, 150, 160])
def test_every_launch_configuration_matches_reference(config, n):
    from ttt_decode.ops.attention import triton_decode

    g = torch.Generator().manual_seed(n)
    q, k, v = (torch.randn(s, generator=g).half() for s in ((2, 3, 16), (2, 3, 160, 16), (2, 3, 160, 16)))
    n_valid = torch.tensor([n])
    ref = decode_attention(q.double(), k.double(), v.double(), n_valid)
    torch_err = rel_err(decode_attention(q, k, v, n_valid), ref)
    k[:, :, n:], v[:, :, n:] = float("nan"), float("nan")  # rows past the position must not be read
    out = triton_decode.launch(q, k, v, n_valid, torch.full_like(q, float("nan")), config)
    assert rel_err(out, ref) <= max(2 * torch_err, 1e-3)


def test_the_dispatcher_picks_only_tested_configurations():
    from ttt_decode.ops.attention.triton_decode import check_config, pick_config

    tested = [check_config(c) for c in LAUNCH_CONFIGS]
    for batch_heads in (1, 6, 32, 256, 512, 1024, 2048, 8192):
        for capacity in (16, 160, 1024, 4096, 32768, 131072):
            assert pick_config(batch_heads, capacity) in tested
    # llama-1.3b (32 heads): batch 16 splits its rows 4 ways, batch 64 fills the GPU in one pass, a short
    # cache is never split, a single sequence is split as far as the dispatcher goes.
    assert [pick_config(b * 32, 32768)["splits"] for b in (1, 16, 32, 64, 256)] == [8, 4, 2, 1, 1]
    assert pick_config(16 * 32, 160)["splits"] == 1


@needs_working_interpreter
def test_the_op_launches_the_picked_configuration():
    from ttt_decode.ops.attention import triton_decode

    g = torch.Generator().manual_seed(3)
    # float32: in fp16 the two launches' different summation orders round to the same outputs
    q, k, v = (torch.randn(s, generator=g) for s in ((1, 2, 16), (1, 2, 1024, 16), (1, 2, 1024, 16)))
    n_valid = torch.tensor([700])
    picked = triton_decode.pick_config(2, 1024)
    assert picked["splits"] == 8
    expect = triton_decode.launch(q, k, v, n_valid, torch.empty_like(q), picked)
    assert torch.equal(decode_attention(q, k, v, n_valid, impl="triton"), expect)
    one_pass = triton_decode.launch(q, k, v, n_valid, torch.empty_like(q), {"splits": 1})
    assert not torch.equal(expect, one_pass)  # the split launch sums in another order: the test can tell them apart
    ref = decode_attention(q.double(), k.double(), v.double(), n_valid)
    assert rel_err(expect, ref) < 1e-5


def test_bad_launch_configuration_is_one_line_error():
    from ttt_decode.ops.attention.triton_decode import check_config

    with pytest.raises(UserError, match="splits must be a positive power of two, got 3"):
        check_config({"splits": 3})
    with pytest.raises(UserError, match="unknown decode attention launch setting"):
        check_config({"BLOCK": 64})
    assert check_config({"splits": 4}) == {"BLOCK_T": 64, "num_warps": 1, "splits": 4}


def test_equals_transformers_llama():
    transformers = pytest.importorskip("transformers")
    model = tiny(dtype=torch.float32)
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**hf_llama_config_kwargs(model.config))).eval()
    hf.load_state_dict(hf_llama_state_dict(model), strict=True)
    ids = torch.randint(0, 500, (2, 25), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = hf(ids).logits
    assert rel_err(model(ids), ref) < 1e-4
    assert rel_err(teacher_force(model, ids, 5), ref) < 1e-4


def test_capacity_is_checked():
    model = tiny()
    state = model.allocate_state(1, max_seq_len=8)
    with pytest.raises(UserError, match="capacity"):
        model.prefill(torch.zeros(1, 9, dtype=torch.long), state)
    with pytest.raises(UserError, match="unknown inner net 'attn_flash' for a Transformer model"):
        TransformerLM(get_config("llama-tiny"), "attn_flash", device="cpu")


@pytest.mark.gpu
@pytest.mark.parametrize("config", LAUNCH_CONFIGS, ids=lambda c: "-".join(f"{k}{v}" for k, v in c.items()) or "default")
@pytest.mark.parametrize("n", [1, 777, 2048])
def test_decode_attention_kernel_gpu_real_shapes(n, config):
    """llama-1.3b shapes (H 32, f 64), fp16, a 2048-row cache on the GPU, every launch configuration."""
    from ttt_decode.ops.attention import triton_decode

    g = torch.Generator(device="cuda").manual_seed(n)
    q = torch.randn(16, 32, 64, device="cuda", generator=g).half()
    k, v = (torch.randn(16, 32, 2048, 64, device="cuda", generator=g).half() for _ in range(2))
    n_valid = torch.tensor([n], device="cuda")
    ref = decode_attention(q.double(), k.double(), v.double(), n_valid)
    torch_err = rel_err(decode_attention(q, k, v, n_valid), ref)
    out = triton_decode.launch(q, k, v, n_valid, torch.empty_like(q), config)
    assert rel_err(out, ref) <= max(2 * torch_err, 1e-3)


@pytest.mark.gpu
def test_llama_graph_equals_eager_gpu():
    from ttt_decode import models

    model = models.build("llama-1.3b", inner_net="attn_triton", dtype="float16", device="cuda")
    ids = torch.randint(0, model.vocab_size, (4, 40), device="cuda")
    eager = teacher_force(model, ids, 8)
    graph = teacher_force(model, ids, 8, cuda_graph=True)
    assert rel_err(graph, eager) < 1e-2
    assert rel_err(eager, model(ids)) < 1e-2


def test_compiled_step_traces_the_block_once(monkeypatch):
    """Regional compilation of the Transformer: every block hits one compiled graph (the caches are
    graph inputs), and the compiled step gives the eager step's logits. Traced with dynamo's eager
    backend: what is counted is the graphs, not inductor's code."""
    from torch._dynamo.utils import counters

    from ttt_decode.decode import engine

    real = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: real(fn, **{**kw, "backend": "eager"}))
    torch._dynamo.reset()
    counters.clear()
    from ttt_decode import models

    model = models.build("llama-tiny", device="cpu", dtype=torch.float32)
    assert len(model.compile_regions()) == model.config.num_layers > 1
    ids = torch.randint(0, model.vocab_size, (2, 5), generator=torch.Generator().manual_seed(0))
    states = [model.allocate_state(2, max_seq_len=8) for _ in range(2)]
    for s in states:
        model.prefill(ids[:, :4], s)
    out = engine.compiled_step(model)(ids[:, 4], states[0])
    assert counters["stats"]["unique_graphs"] == 1
    torch.testing.assert_close(out, model.step(ids[:, 4], states[1]))
    for a, b in zip(states[0].k + states[0].v, states[1].k + states[1].v):
        torch.testing.assert_close(a, b)
