"""Synthetic bench records shaped like the real ones (exp/results/h200/decode_sweep_h200_87dabab), for the
report's tests: several models, batches, prompt lengths and generation lengths, ok and oom cells."""

from ttt_decode.bench.records import append_jsonl, cell_id

GPU = "NVIDIA H200"
M1 = ("ttt-1b", "mlp_1_dual_triton")
M2 = ("ttt-1b", "mlp_2_dual_triton")
MAMBA = ("mamba-1.4b", "mamba_triton")
LLAMA = ("llama-1.3b", "attn_triton")
MODELS = (M1, M2, MAMBA, LLAMA)
BATCHES = (64, 128, 256, 512)
CONTEXTS = (1024, 4096, 16384, 32768)
CONTEXT_BATCHES = (64, 256)


def step_ms(model, batch: int, promptlen: int) -> float:
    """A made-up median step: flat in context for TTT and Mamba, growing with the KV cache for llama."""
    if model == M1:
        return 2.0 + 0.02 * batch
    if model == M2:
        return 0.1 * batch  # throughput flat in batch: a knee at the first batch
    if model == MAMBA:
        return 1.5 + 0.015 * batch
    return 1.0 + 0.01 * batch + batch * promptlen * 1e-5


def _requested(model, batch, promptlen, genlen, inner=True):
    return {"model": model[0], "inner_net": model[1] if inner else None, "dtype": "float16", "state_dtype": None,
            "mode": "decode", "batch": batch, "promptlen": promptlen, "genlen": genlen, "compile": True,
            "cuda_graph": True}


def ok_record(model, batch, promptlen=1, genlen=128, step=None, early=None, late=None):
    step = step_ms(model, batch, promptlen) if step is None else step
    req = _requested(model, batch, promptlen, genlen)
    return {"kind": "bench", "gpu": GPU, "git_commit": "abc1234", "cell_id": cell_id(req), "status": "ok",
            **req, "state_dtype": "float16",
            "decode_tokens_per_s": batch / (step / 1e3), "step_ms": {"mean": step * 1.02, "median": step, "n": genlen},
            "step_ms_early": step if early is None else early, "step_ms_late": step if late is None else late,
            "floor_ms": step / 2, "pct_of_roofline": 50.0}


def oom_record(model, batch, promptlen=1, genlen=128):
    # A failure record knows only what was asked for: no inner net when the model's default was meant.
    req = _requested(model, batch, promptlen, genlen, inner=model != LLAMA)
    return {"kind": "bench", "gpu": GPU, "git_commit": "abc1234", "cell_id": cell_id(req), "status": "oom",
            "error": "estimate: 150 GB of 139 GB", **req}


def study_records() -> list[dict]:
    """A batch sweep at prompt 1, context sweeps at 1k-32k, and genlen 2048 cells."""
    recs = []
    for model in MODELS:
        for b in BATCHES:
            recs.append(oom_record(model, b) if model == LLAMA and b == 512 else ok_record(model, b))
        for p in CONTEXTS:
            for b in CONTEXT_BATCHES:
                recs.append(oom_record(model, b, p) if model == LLAMA and (b, p) == (256, 32768)
                            else ok_record(model, b, p))
        # The same cell as the sweep's B=64 apart from genlen; a different figure, so the test can tell them apart.
        step = step_ms(model, 64, 1) * 1.1
        late = step * (1.5 if model == LLAMA else 1.004)
        recs.append(ok_record(model, 64, genlen=2048, step=step, early=step, late=late))
    recs.append(ok_record(M1, 1024, genlen=2048, early=22.5, late=22.6))  # measured only at genlen 2048
    return recs


def write(path, records) -> str:
    for r in records:
        append_jsonl(str(path), r)
    return str(path)
