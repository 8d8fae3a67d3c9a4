"""Building blocks shared by the model families, and the contract every model follows.

Every model (TTT, Mamba, ...) is a `DecodeLM`:
  logits = model(input_ids)                      # [B, N, V] full-sequence forward, no state kept
  state = model.allocate_state(batch, state_dtype)  # static inference state, allocated once
  model.reset_state(state)                       # back to the start, in place (no allocation)
  logits = model.prefill(input_ids, state)       # [B, N, V]; advances state by N tokens
  logits = model.prefill(ids, state, last_only=True)  # [B, 1, V]: the LM head on the last position only
  logits = model.step(input_ids, state)          # [B] -> [B, V]; one token, graph-capturable
Logits are float32 (float64 for a float64 model) over the padded vocabulary; `vocab_size` says how
many columns are real tokens. The residual stream is kept in float32 (float64 for float64 weights).
"""

from __future__ import annotations

import contextlib
import os

import torch
import torch.nn.functional as F
from torch import nn

from ttt_decode.errors import UserError
from ttt_decode.ops import split_k, swiglu_gemm
from ttt_decode.ops.conv_ring import ring_conv_step, ring_prefill
from ttt_decode.ops.norms import acc_dtype as residual_dtype
from ttt_decode.ops.norms import rms_norm


def triton_interpreter_on() -> bool:
    """Whether Triton runs kernels in its interpreter (TRITON_INTERPRET, read the way Triton reads it)."""
    try:
        from triton import knobs

        return bool(knobs.runtime.interpret)
    except (ImportError, AttributeError):
        return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes", "on")


def check_triton_usable(inner_net: str | None, device) -> None:
    """Refuse, before any weight is allocated, Triton kernels (inner nets named *_triton) on a CPU without
    the interpreter: they would fail at their first launch, deep in Triton ("0 active drivers")."""
    device = torch.device(device if device is not None else "cpu")
    if not inner_net or not inner_net.endswith("_triton") or device.type != "cpu" or triton_interpreter_on():
        return
    instead = {"mamba_triton": "mamba_ref", "attn_triton": "attn_ref"}.get(inner_net, inner_net.removesuffix("_triton"))
    raise UserError(f"inner net {inner_net!r} runs Triton kernels, which on CPU need the Triton interpreter: set "
                    f"TRITON_INTERPRET=1 in the environment (e.g. TRITON_INTERPRET=1 ttt-decode ...), or use "
                    f"--inner_net {instead}")


_PROFILING = False
_NULL = contextlib.nullcontext()


class _Stage:
    """A named range in torch.profiler traces (and NVTX for nsys on CUDA)."""

    __slots__ = ("name", "_rf", "_nvtx")

    def __init__(self, name: str):
        self.name = name

    def __enter__(self):
        self._rf = torch.profiler.record_function(self.name)
        self._rf.__enter__()
        self._nvtx = torch.cuda.is_available()
        if self._nvtx:
            torch.cuda.nvtx.range_push(self.name)

    def __exit__(self, *exc):
        if self._nvtx:
            torch.cuda.nvtx.range_pop()
        self._rf.__exit__(*exc)


def stage(name: str):
    """Mark a part of the decode step ('ttt.inner_loop', 'mlp', ...) for profiler traces.

    A shared no-op unless profiling is switched on with `set_profiling(True)`, so the normal step
    pays nothing and torch.compile sees no ranges.
    """
    return _Stage(name) if _PROFILING else _NULL


def set_profiling(enabled: bool) -> None:
    global _PROFILING
    _PROFILING = bool(enabled)


# Stage names used by the models, in step order (the profiler's breakdown uses this order).
STAGES = ("embed", "pre_conv", "ttt.proj", "ttt.conv_qk", "ttt.inner_loop", "ttt.gate_norm",
          "ttt.o_proj", "mamba.in_proj", "mamba.conv", "mamba.x_proj_dt", "mamba.ssm_step", "mamba.out_proj",
          "attn.qkv", "attn.attention", "attn.o_proj", "mlp", "lm_head", "sampling")


class RMSNorm(nn.Module):
    """RMSNorm computed in float32 (float64 for float64 input), output in the weight's dtype."""

    def __init__(self, dim: int, eps: float, dtype=None, device=None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, dtype=dtype, device=device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x)) with gate and up fused into one projection."""

    def __init__(self, dim: int, hidden: int, dtype=None, device=None):
        super().__init__()
        self.hidden = hidden
        self.gate_up = nn.Linear(dim, 2 * hidden, bias=False, dtype=dtype, device=device)
        self.down = nn.Linear(hidden, dim, bias=False, dtype=dtype, device=device)
        # The decode step's gate_up and silu * up in one kernel (ops.swiglu_gemm); set by the model that owns it.
        self.fused_act = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).split(self.hidden, dim=-1)
        return self.down(F.silu(gate) * up)

    def step_parts(self, x: torch.Tensor, slices: int) -> torch.Tensor:
        """forward of x [B, dim] in a decode step: with fused_act the gate_up product and silu * up in one kernel
        (ops.swiglu_gemm); with slices > 1 the down projection's K-split partial sums [slices, B, dim]
        (ops.split_k: for a consumer that adds them into the residual stream itself)."""
        if self.fused_act:
            act = swiglu_gemm.swiglu_gate_up(x, self.gate_up.weight)
        else:
            gate, up = self.gate_up(x).split(self.hidden, dim=-1)
            act = F.silu(gate) * up
        if slices == 1:
            return self.down(act)
        return split_k.linear_parts(act, self.down.weight, slices)


class CausalConv1d(nn.Module):
    """Depthwise causal convolution (width W) whose decode state is a ring of the last W inputs.

    weight [D, W] (tap W-1 multiplies the newest input), bias [D]. conv_state [B, W, D] and the shared
    ring position conv_pos [1] int64 as in ops.conv_ring (the model advances conv_pos once per token).
    """

    def __init__(self, dim: int, width: int, bias: bool = True, dtype=None, device=None):
        super().__init__()
        self.width = width
        self.weight = nn.Parameter(torch.empty(dim, width, dtype=dtype, device=device))
        self.bias = nn.Parameter(torch.zeros(dim, dtype=dtype, device=device)) if bias else None
        nn.init.uniform_(self.weight, -width ** -0.5, width ** -0.5)

    def forward(self, x: torch.Tensor, conv_state: torch.Tensor | None = None,
                conv_pos: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, N, D] -> [B, N, D]. With conv_state: continue from the ring and leave the last W inputs in
        it, laid out for position (conv_pos + N) % W."""
        if conv_state is not None:
            return ring_prefill(x, conv_state, conv_pos, self.weight, self.bias, residual_dtype(x.dtype)).to(x.dtype)
        full = F.pad(x.transpose(1, 2), (self.width - 1, 0))  # [B, D, W - 1 + N]
        return F.conv1d(full, self.weight.unsqueeze(1), self.bias, groups=self.weight.shape[0]).transpose(1, 2)

    def step(self, x: torch.Tensor, conv_state: torch.Tensor, conv_pos: torch.Tensor) -> torch.Tensor:
        """x [B, D] -> [B, D]; writes x into slot conv_pos of conv_state (one slot, not a shift)."""
        return ring_conv_step(x, conv_state, conv_pos, self.weight, self.bias)


class DecodeLM(nn.Module):
    """Base of every model: embedding, final norm and tied LM head, plus the decode contract."""

    config = None
    # Where the weights came from: "random(seed=N)" or "checkpoint:<absolute path>"; goes into every record.
    weights_source = "random"
    # False for a model whose step cannot be captured in a CUDA graph (an outside implementation such as
    # transformers' Mamba): the engine then runs it eagerly and refuses cuda_graph=True.
    supports_cuda_graph = True
    # True for a model with a KV cache (Transformer): allocate_state then takes max_seq_len.
    uses_kv_cache = False

    @property
    def dtype(self) -> torch.dtype:
        return self.embed.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.embed.weight.device

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    def lm_head(self, h: torch.Tensor) -> torch.Tensor:
        """Final norm + tied head: h [..., D] (residual dtype) -> logits [..., V_padded] in residual dtype."""
        return self.head_logits(self.norm_f(h))

    def head_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The head alone: x [..., D] (normed, the weights' dtype) -> logits [..., V_padded] in residual dtype."""
        weight = self.head_weight if self.head_weight is not None else self.embed.weight
        out_dtype = residual_dtype(self.dtype)
        if x.is_cuda and x.dtype != out_dtype and out_dtype == torch.float32:
            # fp16/bf16 weights, float32 logits: cuBLAS writes them from its float32 accumulator. Rounding
            # them to fp16 first and casting after cost a copy kernel that read 51 MB and wrote 103 MB per
            # step at B = 512 (73 us of a 4.6 ms ttt-1b step on the H200, profile_compiled_h200_aab85b4/).
            flat = torch.mm(x.reshape(-1, x.shape[-1]), weight.t(), out_dtype=torch.float32)
            return flat.reshape(*x.shape[:-1], weight.shape[0])
        return F.linear(x, weight).to(out_dtype)

    @property
    def head_weight(self):
        return getattr(self, "lm_head_weight", None)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        state = self.allocate_state(input_ids.shape[0])
        return self.prefill(input_ids, state)

    def allocate_state(self, batch: int, state_dtype: torch.dtype | None = None):
        raise NotImplementedError

    def reset_state(self, state) -> None:
        raise NotImplementedError

    # Whether prefill continues from a non-empty state (so a long prompt can go in chunks: DecodeSession
    # does that to bound the activations' memory); most baselines' prefills start from an empty state.
    continues_prefill = True
    # Whether the whole inference state is device tensors (dataclasses of them), so that a copy of them
    # stands in for a prefill (DecodeSession.snapshot); the baselines keep library objects.
    state_is_tensors = True
    # Chunk lengths a multiple of this keep the prefill on its fast path (TTT: whole mini-batches).
    prefill_multiple = 1

    def prefill(self, input_ids: torch.Tensor, state, last_only: bool = False) -> torch.Tensor:
        raise NotImplementedError

    def step(self, input_ids: torch.Tensor, state) -> torch.Tensor:
        raise NotImplementedError

    def state_bytes_per_seq(self, state_dtype: torch.dtype | None = None) -> int:
        """Bytes of recurrent state (incl. caches and conv states) one sequence needs."""
        raise NotImplementedError

    def decode_cost(self, batch: int, state_dtype: torch.dtype | None = None) -> dict:
        """Compulsory traffic and work of one decode step for the whole batch, from the config:
        {"weight_bytes", "state_bytes", "bytes", "flops"}: weights read once, recurrent state (and
        caches) read/written as the step must, and the FLOPs of every matmul and the inner loop."""
        raise NotImplementedError

    def step_options(self, state) -> dict:
        """The decode step's choices that the switches and dispatchers resolved for this state (K-split slices,
        fused kernels), for the records: what ran, not only what was asked. {} for a model without any."""
        return {}

    def weight_bytes(self) -> int:
        """Bytes of parameters one decode step reads (every weight once; the tied embedding once, as LM head)."""
        return sum(p.numel() * p.element_size() for p in self.parameters())


def check_ids(input_ids, ndim: int, batch: int) -> None:
    """Token ids given to prefill (ndim 2: [B, N]) or step (ndim 1: [B]) of a state for `batch` sequences."""
    if input_ids.dim() != ndim or input_ids.dtype not in (torch.int64, torch.int32):
        raise UserError(f"input_ids must be an integer tensor of {ndim} dims, got {input_ids.dtype} "
                        f"{tuple(input_ids.shape)}")
    if input_ids.shape[0] != batch:
        raise UserError(f"input_ids has batch {input_ids.shape[0]} but the state was allocated for {batch}")
    if ndim == 2 and input_ids.shape[1] < 1:
        raise UserError("the prompt must hold at least one token")
