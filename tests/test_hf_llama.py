"""The hf:llama-* baseline: transformers' LlamaForCausalLM with a StaticCache, holding exactly our
Transformer's weights, run as a DecodeLM (prefill, step, reset, bench cell, CUDA graph)."""

import pytest
import torch

from conftest import rel_err
from ttt_decode.bench.records import read_jsonl
from ttt_decode.cli import main
from ttt_decode.decode import DecodeSession, teacher_force
from ttt_decode.errors import UserError
from ttt_decode.models import build, load_model, randomize_

pytest.importorskip("transformers")


@pytest.fixture(autouse=True)
def calibration_cache(tmp_path, monkeypatch):
    # Bench cells measure (and cache) the CPU roofline once per test directory, never in the user's home.
    monkeypatch.setenv("TTT_DECODE_CACHE", str(tmp_path / "cache"))


def ids_of(batch, n, seed=1):
    return torch.randint(0, 500, (batch, n), generator=torch.Generator().manual_seed(seed))


def test_same_logits_as_ours_prefill_then_steps():
    """Same seed, same weights: a 6-token prefill and 14 teacher-forced decode steps agree with our
    llama-tiny to 1e-4 at every position, and the full forward too."""
    hf = load_model("hf:llama-tiny", dtype="float32", device="cpu")
    ours = load_model("llama-tiny", dtype="float32", device="cpu")
    assert type(hf).__name__ == "HFLlamaLM" and hf.inner_net == "hf_transformers"
    assert hf.uses_kv_cache and hf.continues_prefill and not hf.state_is_tensors and hf.supports_cuda_graph
    assert hf.weights_source == "random(seed=0)" and hf.weight_bytes() == ours.weight_bytes()
    ids = ids_of(2, 20)
    a, b = teacher_force(ours, ids, 6), teacher_force(hf, ids, 6)
    assert b.dtype == torch.float32 and b.shape == (2, 20, ours.config.padded_vocab_size)
    for t in range(20):
        assert rel_err(b[:, t], a[:, t]) < 1e-4, t
    assert rel_err(hf(ids), ours(ids)) < 1e-4
    # Not vacuous: another seed gives other logits.
    other = load_model("hf:llama-tiny", dtype="float32", device="cpu", seed=1)
    assert rel_err(teacher_force(other, ids, 6), a) > 1e-2


def test_weights_are_ours_not_a_copy():
    """Every weight of the wrapped LlamaForCausalLM is one of our model's tensors (norms perturbed, so the
    mapping of each one counts)."""
    from ttt_decode.models.baselines import HFLlamaLM

    ours = randomize_(build("llama-tiny", dtype="float32", device="cpu"))
    hf = HFLlamaLM(ours)
    storage = {p.untyped_storage().data_ptr() for p in ours.parameters()}
    assert all(p.untyped_storage().data_ptr() in storage for p in hf.hf.parameters())
    assert hf.hf.lm_head.weight is hf.hf.model.embed_tokens.weight
    ids = ids_of(2, 12, seed=3)
    assert rel_err(teacher_force(hf, ids, 4), teacher_force(ours, ids, 4)) < 1e-4


def test_last_only_reset_and_prefill_again():
    hf = load_model("hf:llama-tiny", dtype="float32", device="cpu")
    ids = ids_of(2, 11, seed=2)
    state = hf.allocate_state(2, max_seq_len=16)
    assert state.capacity == 16 and state.nbytes() == 2 * hf.state_bytes_per_seq(context=16)
    full = hf.prefill(ids[:, :7], state)
    assert full.shape == (2, 7, hf.config.padded_vocab_size) and int(state.pos) == 7
    first = [hf.step(ids[:, t], state).clone() for t in range(7, 11)]
    assert int(state.pos) == 11 and first[0].shape == (2, hf.config.padded_vocab_size)
    hf.reset_state(state)
    assert int(state.pos) == 0 and all(int(layer.cumulative_length) == 0 for layer in state.cache.layers)
    last = hf.prefill(ids[:, :7], state, last_only=True)
    assert last.shape == (2, 1, hf.config.padded_vocab_size) and last.dtype == torch.float32
    assert rel_err(last, full[:, -1:]) < 1e-6
    again = [hf.step(ids[:, t], state) for t in range(7, 11)]
    for x, y in zip(again, first):
        assert torch.equal(x, y)


def test_prefill_continues_so_a_prompt_can_go_in_chunks():
    """Prefill in pieces (3 + 5 + 2 tokens, and a step between two of them) leaves the cache a one-call
    prefill leaves: the same last logits and the same decode steps after it; DecodeSession's chunked
    last-only prefill takes hf:llama in chunks too."""
    from ttt_decode.decode import engine

    hf = load_model("hf:llama-tiny", dtype="float32", device="cpu")
    ids = ids_of(2, 14, seed=4)
    one = hf.allocate_state(2, max_seq_len=16)
    full = hf.prefill(ids[:, :10], one)
    after = [hf.step(ids[:, t], one).clone() for t in range(10, 14)]
    pieces = hf.allocate_state(2, max_seq_len=16)
    hf.prefill(ids[:, :3], pieces)
    hf.prefill(ids[:, 3:8], pieces)
    assert int(pieces.pos) == 8
    last = hf.prefill(ids[:, 8:10], pieces, last_only=True)
    assert rel_err(last, full[:, -1:]) < 1e-5
    for t, ref in zip(range(10, 14), after):
        assert rel_err(hf.step(ids[:, t], pieces), ref) < 1e-5
    mixed = hf.allocate_state(2, max_seq_len=16)  # a decode step, then more prompt
    hf.prefill(ids[:, :4], mixed)
    hf.step(ids[:, 4], mixed)
    assert rel_err(hf.prefill(ids[:, 5:10], mixed)[:, -1:], full[:, -1:]) < 1e-5
    with pytest.raises(UserError, match="10 \\+ 7 tokens exceed the KV cache capacity 16") as e:
        hf.prefill(ids_of(2, 7), mixed)
    assert "\n" not in str(e.value)
    assert engine.prefill_chunk_len(hf, 64, 32768) == engine.PREFILL_CHUNK_TOKENS // 64
    # So its memory estimate is our Transformer's (a chunk's activations, not a 32 k prompt's: the H200
    # study's hf:llama-1.3b cell at 32 k and batch 16 was refused at 163 GB where ours needs ~107 GB).
    ours = load_model("llama-tiny", dtype="float32", device="cpu")
    kw = dict(max_seq_len=32768 + 64, prompt_len=32768, last_only=True)
    assert engine.estimate_bytes(hf, 16, **kw) == engine.estimate_bytes(ours, 16, **kw)
    assert not DecodeSession(hf, 2, cuda_graph=False, max_seq_len=16).can_snapshot()


def test_bad_state_requests_are_one_line_errors():
    hf = load_model("hf:llama-tiny", dtype="float32", device="cpu")
    with pytest.raises(UserError, match="drop --state-dtype float16 or pass --dtype float16") as e:
        hf.allocate_state(2, torch.float16)
    assert "\n" not in str(e.value)
    with pytest.raises(UserError, match="capacity 8"):
        hf.prefill(ids_of(2, 9), hf.allocate_state(2, max_seq_len=8))
    with pytest.raises(UserError, match="state was allocated for 2"):
        hf.prefill(ids_of(3, 4), hf.allocate_state(2, max_seq_len=8))
    with pytest.raises(UserError, match="batch must be a positive integer"):
        hf.allocate_state(0)


def test_costs_are_our_transformers():
    hf = load_model("hf:llama-tiny", dtype="float32", device="cpu")
    ours = load_model("llama-tiny", dtype="float32", device="cpu")
    assert hf.state_bytes_per_seq(context=100) == ours.state_bytes_per_seq(context=100)
    assert hf.decode_cost(4, context=100) == ours.decode_cost(4, context=100)
    assert hf.default_state_dtype() == torch.float32


def test_names_checked():
    with pytest.raises(UserError, match=r"Mamba models \(mamba-130m ... mamba-2.8b\) and Transformers "
                                        r"\(llama-1.3b, llama-tiny\), not 'ttt-tiny'"):
        load_model("hf:ttt-tiny", device="cpu")
    with pytest.raises(UserError, match="drop --inner_net"):
        load_model("hf:llama-tiny", inner_net="attn_ref", device="cpu")
    with pytest.raises(UserError, match="Mamba models only"):
        load_model("mamba-ssm:llama-tiny", device="cpu")
    # Mamba names still give transformers' Mamba.
    assert type(load_model("hf:mamba-tiny", dtype="float32", device="cpu")).__name__ == "HFMambaLM"


def test_fidelity_check_uses_our_transformer_as_reference():
    from ttt_decode.decode.check import run_checks

    hf = load_model("hf:llama-tiny", dtype="float32", device="cpu")
    rows = run_checks(hf, batch=2, steps=8, promptlen=4, checks=("fidelity", "prefill_decode_vs_forward"),
                      progress=None)
    assert all(r["passed"] for r in rows), rows


def test_bench_cell_writes_an_ok_record(tmp_path):
    assert main(["bench", "--model-name", "hf:llama-tiny", "--batch", "2", "--promptlen", "8", "--genlen", "4",
                 "--no_cg", "--logdir", str(tmp_path), "--device", "cpu", "--repeats", "1"]) == 0
    rec = read_jsonl(str(tmp_path / "results.jsonl"))[-1]
    assert rec["status"] == "ok" and rec["model"] == "hf:llama-tiny" and rec["inner_net"] == "hf_transformers"
    assert rec["config_name"] == "llama-tiny" and rec["dtype"] == rec["state_dtype"] == "float16"
    assert rec["decode_path"] == "eager" and rec["decode_tokens_per_s"] > 0 and rec["prefill_ms"] > 0
    ours = load_model("llama-tiny", device="cpu")
    assert rec["context_for_cost"] == 8 + 4 // 2
    assert rec["state_bytes_per_seq"] == ours.state_bytes_per_seq(context=rec["context_for_cost"])



def test_step_reads_nothing_back_to_the_host():
    """What a CUDA graph needs of the step, checked on CPU: no op of it reads a tensor's value on the host
    (`.item()`, `bool(t)`: aten._local_scalar_dense) or makes a tensor from Python data (aten.lift_fresh)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    hf = load_model("hf:llama-tiny", dtype="float32", device="cpu")
    state = hf.allocate_state(2, max_seq_len=16)
    hf.prefill(ids_of(2, 5), state)
    ops = set()

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            ops.add(func.name())
            return func(*args, **(kwargs or {}))

    with Record():
        hf.step(ids_of(2, 1)[:, 0], state)
    assert "aten::index_copy_" in ops  # the cache write was seen
    assert not {op for op in ops if op.startswith(("aten::_local_scalar_dense", "aten::lift_fresh"))}, ops


@pytest.mark.gpu
def test_step_captured_in_a_cuda_graph_gpu():
    """The step reads nothing back to the host: DecodeSession captures it, and the replays give the eager
    logits (and ours, float32); llama-1.3b in fp16 at real shapes too."""
    hf = load_model("hf:llama-tiny", dtype="float32", device="cuda")
    ours = load_model("llama-tiny", inner_net="attn_ref", dtype="float32", device="cuda")
    ids = torch.randint(0, hf.vocab_size, (4, 40), device="cuda")
    session = DecodeSession(hf, 4, cuda_graph=True, max_seq_len=40)
    assert session.graph is not None
    eager = teacher_force(hf, ids, 8)
    graph = teacher_force(hf, ids, 8, cuda_graph=True)
    assert rel_err(graph, eager) < 1e-5
    assert rel_err(graph, teacher_force(ours, ids, 8)) < 1e-4
    big = load_model("hf:llama-1.3b", dtype="float16", device="cuda")
    ids = torch.randint(0, big.vocab_size, (4, 40), device="cuda")
    assert rel_err(teacher_force(big, ids, 8, cuda_graph=True), teacher_force(big, ids, 8)) < 1e-2
