"""The session's last-only prefill: a long prompt in chunks, the LM head on the last position only.

It must give the logits of a one-call prefill (and the same state after it: the decode steps that
follow agree), take as many chunks as prefill_chunk_len says, and let the memory estimate admit long
prompts that full logits would not fit."""

import pytest
import torch

from ttt_decode import models
from ttt_decode.decode import engine
from ttt_decode.decode.engine import DecodeSession, estimate_bytes, prefill_chunk_len

CASES = [("ttt-tiny", "mlp_2_dual"), ("ttt-tiny", "mlp_1_dual"), ("ttt-tiny", "mlp_2_primal"),
         ("mamba-tiny", None), ("llama-tiny", None)]


def _build(name, net):
    kw = {"inner_net": net} if net else {}
    return models.build(name, device="cpu", dtype=torch.float32, **kw)


@pytest.mark.parametrize("name,net", CASES)
def test_chunked_last_only_equals_one_call(name, net, monkeypatch):
    torch.manual_seed(0)
    model = _build(name, net)
    B, N = 3, 70  # 70: whole mini-batches and a remainder, so chunks end mid-mini-batch too
    monkeypatch.setattr(engine, "PREFILL_CHUNK_TOKENS", B * 16)
    assert prefill_chunk_len(model, B, N) == 16
    ids = torch.randint(0, model.vocab_size, (B, N + 4))
    calls = []
    real = model.prefill

    def counted(input_ids, state, last_only=False):
        calls.append(input_ids.shape[1])
        return real(input_ids, state, last_only=last_only)

    one = DecodeSession(model, B, cuda_graph=False, max_seq_len=N + 8)
    full = one.prefill(ids[:, :N])
    first = one.ids.clone()
    ref_steps = [one.step(ids[:, t]).clone() for t in range(N, N + 4)]

    monkeypatch.setattr(model, "prefill", counted)
    chunked = DecodeSession(model, B, cuda_graph=False, max_seq_len=N + 8)
    last = chunked.prefill(ids[:, :N], last_only=True)
    assert calls == [16, 16, 16, 16, 6]
    assert last.shape == (B, 1, full.shape[-1])
    torch.testing.assert_close(last, full[:, -1:], rtol=1e-5, atol=1e-5)
    assert torch.equal(chunked.ids, first)
    for t, ref in zip(range(N, N + 4), ref_steps):
        torch.testing.assert_close(chunked.step(ids[:, t]), ref, rtol=1e-5, atol=1e-5)


def test_chunk_length_follows_the_batch_and_the_mini_batch():
    ttt, mamba = _build("ttt-tiny", "mlp_1_dual"), _build("mamba-tiny", None)
    assert prefill_chunk_len(ttt, 64, 32768) == engine.PREFILL_CHUNK_TOKENS // 64  # 1024, a multiple of 16
    assert prefill_chunk_len(ttt, 5000, 32768) == 16  # never below one mini-batch
    assert prefill_chunk_len(mamba, 5000, 32768) == 13  # 65536 // 5000
    assert prefill_chunk_len(mamba, 1, 100) == 100  # a short prompt is one chunk


def test_models_that_cannot_continue_take_the_prompt_whole(monkeypatch):
    model = _build("mamba-tiny", None)
    monkeypatch.setattr(model, "continues_prefill", False)  # as the mamba-ssm and transformers adapters
    assert prefill_chunk_len(model, 64, 32768) == 32768


def test_estimate_of_a_long_last_only_prefill_is_a_chunk_not_the_prompt():
    model = models.build("ttt-1b", device="meta", inner_net="mlp_1_dual")
    full = estimate_bytes(model, 64, prompt_len=32768)
    last = estimate_bytes(model, 64, prompt_len=32768, last_only=True)
    # Full float32 logits of 64 x 32 k tokens: 393 GiB. A chunk of 1024 tokens x 64 sequences: ~8.6 GB.
    assert full["activations"] > 390 * 2**30
    assert 4 * 2**30 < last["activations"] < 12 * 2**30


def test_sweep_estimate_admits_a_long_prompt_the_cell_can_run():
    """The sweep's estimate before a cell is the cell's own (a last-only prefill in chunks): llama-1.3b at
    32 k tokens and batch 16 is ~107 GB (KV cache 96 GB), not the ~197 GB that full logits would add."""
    from ttt_decode.bench.sweep import estimate_memory_gb

    cell = {"model": "llama-1.3b", "inner_net": None, "dtype": "float16", "state_dtype": None, "batch": 16,
            "promptlen": 32768, "genlen": 64}
    assert 100 < estimate_memory_gb(cell) < 115


@pytest.mark.parametrize("name,net", [("ttt-tiny", "mlp_2_dual"), ("mamba-tiny", None), ("llama-tiny", None)])
def test_snapshot_restore_stands_in_for_a_prefill(name, net):
    """Decoding from a restored snapshot is decoding after the same prefill: same logits, same tokens."""
    torch.manual_seed(0)
    model = _build(name, net)
    B, N, T = 2, 37, 20  # T steps cross a mini-batch boundary (TTT's state update)
    ids = torch.randint(0, model.vocab_size, (B, N))
    session = DecodeSession(model, B, cuda_graph=False, max_seq_len=N + T + 1, max_steps=T)
    session.prefill(ids, last_only=True)
    snap = session.snapshot()
    first = [session.step().clone() for _ in range(T)]
    tokens = session.tokens.clone()
    session.restore(snap)
    again = [session.step().clone() for _ in range(T)]
    for a, b in zip(first, again):
        assert torch.equal(a, b)
    assert torch.equal(session.tokens, tokens)
    session.reset()  # and a fresh prefill gives the same again
    session.prefill(ids, last_only=True)
    assert torch.equal(session.step(), first[0])


def test_snapshot_refused_where_the_state_is_not_all_tensors(monkeypatch):
    from ttt_decode.errors import UserError

    model = _build("mamba-tiny", None)
    monkeypatch.setattr(model, "state_is_tensors", False)
    session = DecodeSession(model, 2, cuda_graph=False)
    assert not session.can_snapshot()
    with pytest.raises(UserError, match="prefill again"):
        session.snapshot()


def test_decode_cell_prefills_a_long_prompt_once(tmp_path, monkeypatch):
    """A decode cell with a long prompt prefills once (the untimed run) and times its repeats from a
    snapshot; a short prompt prefills every run; the records say which."""
    import json

    from ttt_decode.cli import main

    calls = []
    real = DecodeSession.prefill

    def counted(self, *a, **kw):
        calls.append(1)
        return real(self, *a, **kw)

    monkeypatch.setattr(DecodeSession, "prefill", counted)
    for promptlen, runs in ((300, 1), (20, 3)):
        calls.clear()
        assert main(["bench", "--logdir", str(tmp_path), "--model-name", "mamba-tiny", "--batch", "2",
                     "--promptlen", str(promptlen), "--genlen", "4", "--repeats", "2", "--no_cg"]) == 0
        rec = [json.loads(line) for line in open(tmp_path / "results.jsonl")][-1]
        assert len(calls) == runs == rec["prefill_runs"]
        assert rec["prefill_reused"] is (runs == 1)
        assert rec["status"] == "ok" and rec["decode_steps"] == 4


def test_estimate_refusal_names_what_the_activations_are():
    """A refused last-only prefill says its activations are the prefill's, not logits (the hf:llama 32 k
    cell's record said 'logits and ids 64' for a chunk of activations)."""
    from ttt_decode.decode.engine import OutOfMemoryEstimate, check_memory

    model = models.build("ttt-1b", device="meta", inner_net="mlp_1_dual")
    with pytest.raises(OutOfMemoryEstimate, match="prefill activations"):
        check_memory(model, 64, prompt_len=32768, limit_bytes=2**30, last_only=True)
    with pytest.raises(OutOfMemoryEstimate, match="logits and ids"):
        check_memory(model, 64, prompt_len=32768, limit_bytes=2**30)
