"""The decode engine: a static inference state and a one-token step run as one CUDA-graph replay.

`DecodeSession(model, batch, ...)` allocates everything once for (model, batch, state dtype):
the model's inference state, a static input-id buffer, and a token log. One decode step is

    logits = model.step(ids, state); next = sample(logits); tokens[:, t] = next; ids <- next

captured once in a CUDA graph (on CUDA, unless cuda_graph=False) and replayed for every token: the
TTT mini-batch position lives in a device tensor that the step advances, so a single graph serves
every position. With compile=True the step goes through torch.compile first (Triton kernels are
torch custom ops, so it compiles as one graph) and the compiled step is what gets captured.
Compilation, autotuning and capture all happen in the constructor; `cold_start_s` says how long.

A long prompt goes in with `prefill(ids, last_only=True)`: in chunks of at most PREFILL_CHUNK_TOKENS
tokens over the batch, the LM head on the last position only, so that the prefill's activations stay
small next to the state (a 32 k prompt at batch 64 would otherwise need 420 GB of float32 logits).

Before it allocates anything the session estimates its memory from the config (`estimate_bytes`:
weights, state x batch, logits x batch) and refuses one that is over the device's memory
(`OutOfMemoryEstimate`: GPU memory on CUDA, RAM on CPU), rather than letting it grow until the
machine swaps or the allocator fails. `check_finite` refuses NaN/inf logits (one device sync: callers
run it outside timed windows) so that NaN weights are reported instead of decoding to ids 0.
"""

from __future__ import annotations

import dataclasses
import os
import time

import torch

from ttt_decode.decode.sampling import Sampling, sample
from ttt_decode.errors import NonFiniteLogits, OutOfMemoryEstimate, UserError
from ttt_decode.models.common import stage
from ttt_decode.ops.cuda_graphs import capture_graph
from ttt_decode.ops.step_tokens import record_tokens

WARMUP_STEPS = 2
# Share of the device's memory the estimate may not use: the CUDA context, allocator slack and the
# activations it does not itemise (hidden states of one step are small next to state and logits).
MEMORY_MARGIN = 0.06
# Tokens (summed over the batch) one chunk of a last-only prefill carries, and what a token in flight
# costs: the float32 residual, one layer's projections and MLP intermediate and the inner loop's
# temporaries, about 64 bytes per model dimension (ttt-1b: 128 KB a token, 8.6 GB a chunk).
PREFILL_CHUNK_TOKENS = 1 << 16
PREFILL_BYTES_PER_TOKEN_PER_DIM = 64


def prefill_chunk_len(model, batch: int, n: int) -> int:
    """Tokens per sequence in one chunk of a last-only prefill of n tokens: about PREFILL_CHUNK_TOKENS
    over the batch, a multiple of the model's prefill_multiple; n for models that cannot continue a
    prefill (they take the prompt in one call)."""
    if not getattr(model, "continues_prefill", False):
        return n
    mult = getattr(model, "prefill_multiple", 1)
    return min(n, max(mult, PREFILL_CHUNK_TOKENS // batch // mult * mult))


def device_memory_bytes(device) -> int:
    """Total memory of a device: the GPU's on CUDA, the machine's RAM on CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return torch.cuda.get_device_properties(index).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def estimate_bytes(model, batch: int, state_dtype: torch.dtype | None = None, max_seq_len: int | None = None,
                   prompt_len: int = 1, last_only: bool = False) -> dict:
    """Bytes a session of `batch` sequences needs, from the config alone (works on a meta model):
    the weights; per sequence the recurrent state (or the KV cache of max_seq_len tokens), the float32
    logits of a prefill of prompt_len tokens [P, V] and of one step (output and sampling: 2 x [V]),
    and the token ids. last_only: the prefill goes in chunks with the LM head on the last position
    (DecodeSession.prefill(..., last_only=True)): one row of logits, and one chunk's activations."""
    if getattr(model, "uses_kv_cache", False):
        state = model.state_bytes_per_seq(state_dtype, context=max_seq_len)
    else:
        state = model.state_bytes_per_seq(state_dtype)
    vocab = getattr(model.config, "padded_vocab_size", model.vocab_size)
    ids = 8 * (prompt_len + (max_seq_len or prompt_len) + 1)
    if last_only:
        chunk = prefill_chunk_len(model, batch, prompt_len)
        dim = getattr(model.config, "hidden_size", None) or model.config.d_model
        activations = batch * (4 * vocab * 3 + ids + chunk * dim * PREFILL_BYTES_PER_TOKEN_PER_DIM)
    else:
        activations = batch * (4 * vocab * (prompt_len + 2) + ids)
    out = {"weights": model.weight_bytes(), "state": batch * state, "activations": activations}
    out["total"] = sum(out.values())
    return out


def state_tensors(state) -> list[torch.Tensor]:
    """Every tensor of an inference state (dataclasses, lists, tuples, dicts of them), each once, in a
    fixed order."""
    out, seen = [], set()

    def walk(obj):
        if isinstance(obj, torch.Tensor):
            if id(obj) not in seen:
                seen.add(id(obj))
                out.append(obj)
        elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            for f in dataclasses.fields(obj):
                walk(getattr(obj, f.name))
        elif isinstance(obj, (list, tuple)):
            for x in obj:
                walk(x)
        elif isinstance(obj, dict):
            for x in obj.values():
                walk(x)

    walk(state)
    return out


def _gb(nbytes: float) -> str:
    return f"{nbytes / 2**30:.3g}"


def check_memory(model, batch: int, state_dtype: torch.dtype | None = None, max_seq_len: int | None = None,
                 prompt_len: int = 1, limit_bytes: float | None = None, last_only: bool = False) -> dict:
    """The estimate (estimate_bytes plus 'limit'); OutOfMemoryEstimate if it is over the device's memory
    (or limit_bytes, e.g. --max-memory-gb). Call it before allocating the prompt and the state."""
    est = estimate_bytes(model, batch, state_dtype, max_seq_len, prompt_len, last_only)
    where = "--max-memory-gb" if limit_bytes else ("GPU memory" if model.device.type == "cuda" else "RAM")
    limit = limit_bytes or device_memory_bytes(model.device)
    if est["total"] * (1 + MEMORY_MARGIN) > limit:
        raise OutOfMemoryEstimate(
            f"estimate: batch {batch} needs about {_gb(est['total'])} GB (weights {_gb(est['weights'])}, state "
            f"{_gb(est['state'])}, {'prefill activations' if last_only else 'logits and ids'} "
            f"{_gb(est['activations'])}), more than the {_gb(limit)} GB of "
            f"{where} (less a {MEMORY_MARGIN:.0%} margin); use a smaller --batch")
    return {**est, "limit": limit}


def check_finite(logits: torch.Tensor, vocab_size: int, where: str) -> None:
    """NonFiniteLogits unless every real-vocabulary logit [..., :vocab_size] is finite (syncs the device)."""
    if not bool(torch.isfinite(logits[..., :vocab_size]).all()):
        raise NonFiniteLogits(f"the model produced non-finite logits (NaN/inf) {where}: its weights or state hold "
                              "NaN/inf; check the checkpoint's weights (or use a wider --dtype / --state-dtype)")


def is_oom(e: BaseException) -> bool:
    """An allocation failure of PyTorch (CUDA or CPU) or of Python."""
    if isinstance(e, (MemoryError, torch.cuda.OutOfMemoryError, OutOfMemoryEstimate)):
        return True
    text = str(e).lower()
    return isinstance(e, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text
                                           or "cannot allocate memory" in text)


def _compile_seconds() -> float:
    """Seconds torch.compile has spent in this process so far (Dynamo frames, Inductor included)."""
    try:
        from torch._dynamo.utils import calculate_time_spent

        return float(calculate_time_spent().get("entire_frame_compile", 0.0))
    except Exception:  # an internal API: a torch without it reports 0 rather than failing the session
        return 0.0


def compiled_step(model):
    """torch.compile of a model's decode step.

    Regional compilation where the model names its regions (`compile_regions()`: e.g. every TTT
    block's step, and the TTT step's tail after the blocks): a repeated block is compiled once and the
    same compiled code serves every layer (parameters are graph inputs, so the guards do not tell the
    layers apart), so the cold start is one block's, not 24 blocks'; what no region covers (embedding,
    the LM head's GEMM) runs as it is, all of it captured in the same CUDA graph. Otherwise the whole
    step is one compiled graph."""
    regions = model.compile_regions() if hasattr(model, "compile_regions") else []
    if not regions:
        return torch.compile(model.step, fullgraph=True, dynamic=False)
    compiled = [(obj, name, torch.compile(getattr(obj, name), fullgraph=True, dynamic=False)) for obj, name in regions]

    def step(input_ids, state):
        # The compiled region shadows the block's method for this call only: the model itself stays
        # eager for any other session.
        for obj, name, fn in compiled:
            obj.__dict__[name] = fn
        try:
            return model.step(input_ids, state)
        finally:
            for obj, name, _ in compiled:
                del obj.__dict__[name]

    return step


class DecodeSession:
    def __init__(self, model, batch: int, *, state_dtype: torch.dtype | None = None, cuda_graph: bool | None = None,
                 compile: bool = False, sampling: Sampling = Sampling(), max_steps: int = 4096,
                 max_seq_len: int | None = None, max_memory_bytes: float | None = None):
        if not isinstance(batch, int) or batch < 1:
            raise UserError(f"batch must be a positive integer, got {batch!r}")
        if max_steps < 1:
            raise UserError(f"max_steps must be >= 1, got {max_steps}")
        check_memory(model, batch, state_dtype, max_seq_len, limit_bytes=max_memory_bytes)
        device = model.device
        graphable = getattr(model, "supports_cuda_graph", True)
        if cuda_graph is None:
            cuda_graph = device.type == "cuda" and graphable
        if cuda_graph and not graphable:
            raise UserError(f"{type(model).__name__} ({getattr(model, 'inner_net', '-')}) cannot capture its step in "
                            "a CUDA graph; pass --no_cg (cuda_graph=False)")
        if cuda_graph and device.type != "cuda":
            raise UserError("CUDA graphs need a CUDA device; pass --no_cg (cuda_graph=False) to run on CPU")
        self.model, self.batch, self.sampling = model, batch, sampling
        self.cuda_graph, self.compiled, self.max_steps = cuda_graph, compile, max_steps
        # A KV-cache model needs its capacity (prompt + generated tokens); recurrent models do not.
        self.uses_kv_cache = getattr(model, "uses_kv_cache", False)
        if self.uses_kv_cache:
            self.state = model.allocate_state(batch, state_dtype, max_seq_len=max_seq_len)
        else:
            self.state = model.allocate_state(batch, state_dtype)
        self.tokens_in_state = 0  # host-side count, to refuse overflowing a KV cache without a device sync
        self.ids = torch.zeros(batch, dtype=torch.int64, device=device)  # [B] input of the next step
        self.tokens = torch.zeros(batch, max_steps, dtype=torch.int64, device=device)  # [B, T] step outputs
        self.step_idx = torch.zeros(1, dtype=torch.int64, device=device)
        self._step_fn = compiled_step(model) if compile else model.step
        self.graph = None
        self.graph_replays = 0
        # Where the cold start goes: the first step (tracing, compiling, every Triton kernel's first
        # launch), the other warm-up steps, the graph capture.
        self.cold_start = {"first_step_s": 0.0, "warmup_s": 0.0, "capture_s": 0.0}
        compile_before = _compile_seconds()
        t0 = time.perf_counter()
        if compile and not cuda_graph:
            self._warm_up()
        if cuda_graph:
            self._capture()
        self.cold_start_s = time.perf_counter() - t0
        self.cold_start = {k: round(v, 3) for k, v in self.cold_start.items()}
        self.cold_start["compile_s"] = round(_compile_seconds() - compile_before, 3)

    def _body(self):
        logits = self._step_fn(self.ids, self.state)
        with stage("sampling"):
            nxt = sample(logits, self.model.vocab_size, self.sampling)
            # tokens[:, step_idx] = nxt, ids = nxt, step_idx advanced: one kernel on CUDA (five as PyTorch ops).
            record_tokens(nxt, self.ids, self.tokens, self.step_idx, self.max_steps)
        return logits

    def _warm_up_steps(self, sync):
        for i in range(WARMUP_STEPS):
            t = time.perf_counter()
            self._body()
            sync()
            self.cold_start["first_step_s" if i == 0 else "warmup_s"] += time.perf_counter() - t

    def _warm_up(self):
        # Runs the step (compiles, autotunes) on the real state, which is then reset.
        sync = torch.cuda.synchronize if self.model.device.type == "cuda" else (lambda: None)
        self._warm_up_steps(sync)
        self.reset()

    def _capture(self):
        t = time.perf_counter()
        self.graph, self._logits = capture_graph(self._body, lambda: self._warm_up_steps(torch.cuda.synchronize))
        self.reset()
        torch.cuda.synchronize()
        warm = self.cold_start["first_step_s"] + self.cold_start["warmup_s"]
        self.cold_start["capture_s"] = time.perf_counter() - t - warm

    def reset(self) -> None:
        """Back to an empty context, in place (the graph stays valid)."""
        self.model.reset_state(self.state)
        self.ids.zero_()
        self.step_idx.zero_()
        self.tokens_in_state = 0

    def can_snapshot(self) -> bool:
        """Whether snapshot/restore can stand in for a prefill: the state is device tensors only (our
        models; the baselines' adapters keep host-side positions and caches their libraries replace)."""
        return bool(getattr(self.model, "state_is_tensors", False))

    def snapshot(self) -> dict:
        """A copy of everything a prefill leaves (state tensors, next input, position counters), for
        restore(): decoding again from the same context without prefilling it again."""
        if not self.can_snapshot():
            raise UserError(f"{type(self.model).__name__} keeps part of its state outside tensors: prefill again "
                            "instead of restoring a snapshot")
        return {"tensors": [t.clone() for t in state_tensors(self.state)], "ids": self.ids.clone(),
                "step_idx": self.step_idx.clone(), "tokens_in_state": self.tokens_in_state}

    def restore(self, snap: dict) -> None:
        """Back to the moment of snapshot(), in place (the graph stays valid)."""
        for dst, src in zip(state_tensors(self.state), snap["tensors"], strict=True):
            dst.copy_(src)
        self.ids.copy_(snap["ids"])
        self.step_idx.copy_(snap["step_idx"])
        self.tokens_in_state = snap["tokens_in_state"]

    def _account(self, n: int) -> None:
        self.tokens_in_state += n
        if self.uses_kv_cache and self.tokens_in_state > self.state.capacity:
            raise UserError(f"{self.tokens_in_state} tokens exceed the KV cache capacity {self.state.capacity}; "
                            "create the session with a larger max_seq_len")

    def prefill(self, input_ids: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        """input_ids [B, N] -> logits [B, N, V]; the token sampled from the last logits becomes `ids`.

        last_only: logits [B, 1, V] of the last position, the prompt taken in chunks of
        prefill_chunk_len tokens (what generation needs; memory bounded at any prompt length)."""
        if input_ids.dim() != 2 or input_ids.shape[0] != self.batch or input_ids.shape[1] < 1:
            raise UserError(f"input_ids must be [batch={self.batch}, N>=1], got {tuple(input_ids.shape)}")
        N = input_ids.shape[1]
        self._account(N)
        if not last_only:
            logits = self.model.prefill(input_ids, self.state)
        else:
            chunk = prefill_chunk_len(self.model, self.batch, N)
            for start in range(0, N, chunk):
                logits = self.model.prefill(input_ids[:, start:start + chunk], self.state, last_only=True)
        self.ids.copy_(sample(logits[:, -1], self.model.vocab_size, self.sampling))
        return logits

    def step(self, input_ids: torch.Tensor | None = None) -> torch.Tensor:
        """One token: feeds input_ids [B] (or the last sampled token) -> logits [B, V].

        With a CUDA graph the returned tensor is a static buffer overwritten by the next step: clone it
        to keep it.
        """
        self._account(1)
        if input_ids is not None:
            self.ids.copy_(input_ids)
        if self.graph is None:
            return self._body()
        self.graph.replay()
        self.graph_replays += 1
        return self._logits


def generate(model, input_ids: torch.Tensor, genlen: int, *, sampling: Sampling = Sampling(),
             cuda_graph: bool | None = None, compile: bool = False, state_dtype=None, session=None):
    """Generate genlen new tokens after the prompt input_ids [B, P] -> dict with tokens [B, genlen] and times.

    The first new token comes from the prefill logits, the others from genlen - 1 decode steps.
    """
    if genlen < 1:
        raise UserError(f"genlen must be >= 1, got {genlen}")
    session = session or DecodeSession(model, input_ids.shape[0], state_dtype=state_dtype, cuda_graph=cuda_graph,
                                       compile=compile, sampling=sampling, max_steps=max(genlen, 1),
                                       max_seq_len=input_ids.shape[1] + genlen)
    sync = torch.cuda.synchronize if input_ids.is_cuda else (lambda: None)
    sync()
    t0 = time.perf_counter()
    prefill_logits = session.prefill(input_ids, last_only=True)
    first = session.ids.clone()
    sync()
    t1 = time.perf_counter()
    logits = None
    for _ in range(genlen - 1):
        logits = session.step()
    sync()
    t2 = time.perf_counter()
    check_finite(prefill_logits[:, -1], model.vocab_size, "in the prefill")
    if logits is not None:
        check_finite(logits, model.vocab_size, f"at decode step {genlen - 1}")
    tokens = torch.cat([first.unsqueeze(1), session.tokens[:, : genlen - 1]], dim=1)
    return {"tokens": tokens, "prefill_s": t1 - t0, "decode_s": t2 - t1, "cold_start_s": session.cold_start_s,
            "decode_steps": genlen - 1}


@torch.no_grad()
def teacher_force(model, input_ids: torch.Tensor, n_prompt: int, cuda_graph: bool = False, compile: bool = False,
                  state_dtype=None) -> torch.Tensor:
    """Prefill input_ids[:, :n_prompt], then feed the remaining tokens one decode step at a time.

    Returns logits [B, N, V] (the real decode path; CUDA graphs when asked).
    """
    N = input_ids.shape[1]
    if not 1 <= n_prompt <= N:
        raise UserError(f"n_prompt must be in [1, {N}], got {n_prompt}")
    session = DecodeSession(model, input_ids.shape[0], state_dtype=state_dtype, cuda_graph=cuda_graph,
                            compile=compile, max_steps=max(N - n_prompt, 1), max_seq_len=N)
    out = [session.prefill(input_ids[:, :n_prompt])]
    for t in range(n_prompt, N):
        out.append(session.step(input_ids[:, t]).clone().unsqueeze(1))
    return torch.cat(out, dim=1)
