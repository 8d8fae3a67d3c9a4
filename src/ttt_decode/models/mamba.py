"""The Mamba-1 language model (state-spaces/mamba-* layout), a DecodeLM.

Per block (pre-norm, float32 residual h):
    h = h + Mixer(RMSNorm(h))                                  RMSNorm eps 1e-5
Mixer on x = RMSNorm(h) (letters: D = d_inner = expand * d_model, S = d_state, W = d_conv, R = dt_rank):
    [u | z] = in_proj(x)                                       [B, N, 2D]
    x_c = silu(conv1d(u))                                      depthwise causal conv, width W, with bias
    [dt_r | B | C] = x_proj(x_c)                               [B, N, R + 2S]
    dt = softplus(dt_proj(dt_r))                               dt_proj with bias (the bias is added in the op)
    y = selective_scan(x_c, dt, A = -exp(A_log), B, C) + D * x_c,  y = y * silu(z)
    out = out_proj(y)
then the final RMSNorm and the LM head tied to the embedding.

The recurrence runs through ops.mamba; `inner_net` picks the implementation of the decode step:
"mamba_triton" (fused Triton kernels, the default on CUDA) or "mamba_ref" (PyTorch, the default on CPU).
In the decode step each block's residual add is fused with the next pre-norm (ops.mamba.add_rms_norm).
Prefill (and the full-sequence forward) uses the PyTorch scan for both (ops/mamba/naive.py says what it
costs). Inference state per layer: conv ring [B, W, D] in the weight dtype and ssm state [B, D, S] in the
state dtype (float32 by default, DESIGN section 5; float64 for a float64 model); one ring position
[1] int64 shared by all layers, advanced inside the step (no host sync, one CUDA graph for every step).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ttt_decode import registry
from ttt_decode.configs import MambaConfig
from ttt_decode.errors import UserError
from ttt_decode.models.common import (
    CausalConv1d,
    DecodeLM,
    RMSNorm,
    check_ids,
    check_triton_usable,
    residual_dtype,
    stage,
)
from ttt_decode.ops import mamba as mamba_ops
from ttt_decode.ops import split_k
from ttt_decode.ops.mamba import conv_step_flops, ssm_step_flops

INIT_STD = 0.02
# Published initialisation of dt: softplus(dt_bias) log-uniform in [DT_MIN, DT_MAX].
DT_MIN, DT_MAX, DT_FLOOR = 1e-3, 1e-1, 1e-4
STATE_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def default_inner_net(device) -> str:
    return registry.default("mamba", torch.device(device).type)


def check_inner_net(inner_net: str) -> str:
    """The name, if it is a Mamba implementation (a UserError listing them otherwise)."""
    return registry.get(inner_net, "mamba").name


def _item(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def mamba_state_bytes_per_seq(c: MambaConfig, weight_dtype: torch.dtype, state_dtype: torch.dtype) -> int:
    """ssm state [D, S] in the state dtype + conv ring [W, D] in the weight dtype, per layer."""
    return c.n_layer * (c.d_inner * c.d_state * _item(state_dtype) + c.d_conv * c.d_inner * _item(weight_dtype))


def mamba_decode_cost(c: MambaConfig, batch: int, weight_bytes: int, weight_dtype: torch.dtype,
                      state_dtype: torch.dtype) -> dict:
    """One decode step, whole batch: every weight read once (weight_bytes); per layer the ssm state read
    and written, the conv ring's W-1 newest slots read and one slot written; FLOPs of every matmul
    (2 per weight per token, LM head included) plus the conv and the selective update."""
    s_item, w_item = _item(state_dtype), _item(weight_dtype)
    D, S, W, R = c.d_inner, c.d_state, c.d_conv, c.dt_rank
    state_bytes = c.n_layer * batch * (2 * D * S * s_item + W * D * w_item)
    matmul_params = c.n_layer * (c.d_model * 2 * D + D * (R + 2 * S) + R * D + D * c.d_model)
    matmul_params += c.padded_vocab_size * c.d_model  # LM head
    flops = 2 * batch * matmul_params + c.n_layer * (ssm_step_flops(batch, D, S) + conv_step_flops(batch, D, W))
    return {"weight_bytes": weight_bytes, "state_bytes": state_bytes, "bytes": weight_bytes + state_bytes,
            "flops": flops}


@dataclass
class MambaInferenceState:
    """Everything a Mamba decode carries between tokens, for one batch.

    conv_pos [1] int64: ring slot of the oldest conv input, shared by every layer.
    conv[i] [B, W, D] in the weight dtype; ssm[i] [B, D, S] in state_dtype.
    taps[i] [W, D]: layer i's conv weight tap-major, a copy the decode kernel reads one contiguous row
    per tap from; refreshed from the parameters by reset_state (not per sequence, so not in nbytes).
    """

    conv_pos: torch.Tensor
    conv: list[torch.Tensor]
    ssm: list[torch.Tensor]
    batch: int
    state_dtype: torch.dtype
    taps: list[torch.Tensor] = field(default_factory=list)
    # K slices of every mixer's out_proj in a step (ops.split_k.slices_for, fixed with the batch): with s > 1 a
    # mixer returns s partial sums [s, B, d_model] that add_rms_norm adds into the residual stream.
    out_slices: int = 1

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.conv + self.ssm)


class MambaMixer(nn.Module):
    def __init__(self, config: MambaConfig, impl: str, n_layer: int, dtype=None, device=None):
        super().__init__()
        c = config
        kw = dict(dtype=dtype, device=device)
        D, S, R = c.d_inner, c.d_state, c.dt_rank
        self.d_inner, self.d_state, self.dt_rank, self.d_conv = D, S, R, c.d_conv
        self.in_proj = nn.Linear(c.d_model, 2 * D, bias=c.proj_bias, **kw)
        self.conv1d = CausalConv1d(D, c.d_conv, bias=c.conv_bias, **kw)
        self.x_proj = nn.Linear(D, R + 2 * S, bias=False, **kw)
        self.dt_proj = nn.Linear(R, D, bias=True, **kw)
        self.A_log = nn.Parameter(torch.log(torch.arange(1, S + 1, **kw)).repeat(D, 1))  # [D, S]
        self.D = nn.Parameter(torch.ones(D, **kw))
        self.out_proj = nn.Linear(D, c.d_model, bias=c.proj_bias, **kw)
        with torch.no_grad():
            # The published initialisation (mamba_simple.Mamba): dt_proj uniform, dt_bias = softplus^-1 of a
            # log-uniform dt, out_proj scaled down by sqrt(n_layer).
            std = R ** -0.5
            nn.init.uniform_(self.dt_proj.weight, -std, std)
            dt = torch.exp(torch.rand(D, **kw) * (math.log(DT_MAX) - math.log(DT_MIN)) + math.log(DT_MIN))
            dt = dt.clamp(min=DT_FLOOR)
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
            self.out_proj.weight.div_(math.sqrt(n_layer))
            for lin in (self.in_proj, self.out_proj):
                if lin.bias is not None:
                    lin.bias.zero_()
        self.conv_step, self.ssm_step = mamba_ops.pick_steps(impl)
        self.scan = mamba_ops.pick_scan(impl)

    def _split_dbc(self, dbc):
        R, S = self.dt_rank, self.d_state
        return dbc[..., :R], dbc[..., R:R + S], dbc[..., R + S:]

    def prefill(self, x, conv_state, conv_pos, ssm_state):
        """x [B, N, d_model] normed -> [B, N, d_model]; advances both states by N (conv_pos is not moved)."""
        D = self.d_inner
        xz = self.in_proj(x)  # [B, N, 2D]
        u, z = xz[..., :D], xz[..., D:]
        xc = mamba_ops.conv_prefill(u, conv_state, conv_pos, self.conv1d.weight, self.conv1d.bias)  # [B, N, D]
        dt_r, Bm, Cm = self._split_dbc(self.x_proj(xc))
        dt = F.linear(dt_r, self.dt_proj.weight)  # [B, N, D]; the bias is added inside the op
        y = self.scan(xc, z, dt, Bm, Cm, self.A_log, self.D, self.dt_proj.bias, ssm_state)
        return self.out_proj(y)

    def step(self, x, conv_state, conv_pos, ssm_state, taps, out_slices: int = 1):
        """x [B, d_model] normed -> [B, d_model]; one token. taps [W, D]: conv1d's weight tap-major. out_slices > 1:
        out_proj as that many K-split partial sums [out_slices, B, d_model] (ops.split_k)."""
        D = self.d_inner
        with stage("mamba.in_proj"):
            xz = self.in_proj(x)  # [B, 2D]
            u, z = xz[:, :D], xz[:, D:]
        with stage("mamba.conv"):
            xc = self.conv_step(u, conv_state, conv_pos, taps, self.conv1d.bias)  # [B, D]
        with stage("mamba.x_proj_dt"):
            dt_r, Bm, Cm = self._split_dbc(self.x_proj(xc))  # [B, R], [B, S], [B, S]
            dt = F.linear(dt_r, self.dt_proj.weight)  # [B, D]
        with stage("mamba.ssm_step"):
            y = self.ssm_step(u, xc, z, dt, Bm, Cm, self.A_log, self.D, self.dt_proj.bias, conv_state, conv_pos,
                              ssm_state)  # [B, D]
        with stage("mamba.out_proj"):
            if out_slices > 1:
                return split_k.linear_parts(y, self.out_proj.weight, out_slices)
            return self.out_proj(y)


class MambaBlock(nn.Module):
    def __init__(self, config: MambaConfig, impl: str, dtype=None, device=None):
        super().__init__()
        self.norm = RMSNorm(config.d_model, config.rms_norm_eps, dtype=dtype, device=device)
        self.mixer = MambaMixer(config, impl, config.n_layer, dtype=dtype, device=device)


class MambaLM(DecodeLM):
    """Mamba-1 LM with a chosen decode-step implementation (inner_net 'mamba_triton' or 'mamba_ref')."""

    def __init__(self, config: MambaConfig, dtype=torch.float16, device=None, inner_net: str | None = None):
        super().__init__()
        if not isinstance(config, MambaConfig):
            raise UserError(f"MambaLM needs a Mamba config, got {type(config).__name__}")
        device = torch.device(device if device is not None else "cpu")
        self.config = config
        self.inner_net = check_inner_net(inner_net or default_inner_net(device))
        self.impl = registry.get(self.inner_net).op_impl
        check_triton_usable(self.inner_net, device)
        split_k.check_switch(None if config.proj_bias else config.d_inner, torch.empty((), dtype=dtype).element_size())
        kw = dict(dtype=dtype, device=device)
        self.embed = nn.Embedding(config.padded_vocab_size, config.d_model, **kw)
        nn.init.normal_(self.embed.weight, std=INIT_STD)
        self.layers = nn.ModuleList(MambaBlock(config, self.impl, **kw) for _ in range(config.n_layer))
        self.norm_f = RMSNorm(config.d_model, config.rms_norm_eps, **kw)
        if not config.tie_word_embeddings:
            self.lm_head_weight = nn.Parameter(torch.randn(config.padded_vocab_size, config.d_model, **kw) * INIT_STD)
        self.add_rms_norm = mamba_ops.pick(self.impl)[2]

    # ---- inference state ----
    def default_state_dtype(self) -> torch.dtype:
        return torch.float64 if self.dtype == torch.float64 else torch.float32

    def allocate_state(self, batch: int, state_dtype: torch.dtype | None = None) -> MambaInferenceState:
        if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
            raise UserError(f"batch must be a positive integer, got {batch!r}")
        state_dtype = state_dtype or self.default_state_dtype()
        if state_dtype not in STATE_DTYPES:
            raise UserError(f"Mamba state dtype must be float32, float16 or bfloat16 (or float64), got {state_dtype}")
        c, dev = self.config, self.device
        conv = [torch.zeros(batch, c.d_conv, c.d_inner, dtype=self.dtype, device=dev) for _ in range(c.n_layer)]
        ssm = [torch.zeros(batch, c.d_inner, c.d_state, dtype=state_dtype, device=dev) for _ in range(c.n_layer)]
        taps = [block.mixer.conv1d.weight.detach().t().contiguous() for block in self.layers]
        # out_proj K-split where that measured faster (its partial sums carry no bias: only without one).
        slices = 1 if c.proj_bias else split_k.slices_for(batch, c.d_model, c.d_inner, dev,
                                                          torch.empty((), dtype=self.dtype).element_size())
        return MambaInferenceState(conv_pos=torch.zeros(1, dtype=torch.int64, device=dev), conv=conv, ssm=ssm,
                                   batch=batch, state_dtype=state_dtype, taps=taps, out_slices=slices)

    @torch.no_grad()
    def reset_state(self, state: MambaInferenceState) -> None:
        state.conv_pos.zero_()
        for t in state.conv + state.ssm:
            t.zero_()
        # The weights may have changed since allocate_state (a checkpoint loaded into the same model).
        for taps, block in zip(state.taps, self.layers):
            taps.copy_(block.mixer.conv1d.weight.t())

    def step_options(self, state: MambaInferenceState) -> dict:
        return {"out_slices": state.out_slices}

    def state_bytes_per_seq(self, state_dtype: torch.dtype | None = None) -> int:
        return mamba_state_bytes_per_seq(self.config, self.dtype, state_dtype or self.default_state_dtype())

    def decode_cost(self, batch: int, state_dtype: torch.dtype | None = None) -> dict:
        return mamba_decode_cost(self.config, batch, self.weight_bytes(), self.dtype,
                                 state_dtype or self.default_state_dtype())

    # ---- forward passes ----
    def compile_regions(self):
        """The repeated mixers torch.compile compiles once and reuses (decode.engine.compiled_step)."""
        return [(block.mixer, "step") for block in self.layers]

    @torch.no_grad()
    def prefill(self, input_ids: torch.Tensor, state: MambaInferenceState, last_only: bool = False) -> torch.Tensor:
        """input_ids [B, N] -> logits [B, N, V] ([B, 1, V] with last_only); advances the state by N tokens
        (any N >= 1)."""
        check_ids(input_ids, 2, state.batch)
        h = self.embed(input_ids).to(residual_dtype(self.dtype))  # [B, N, d_model]
        for block, conv, ssm in zip(self.layers, state.conv, state.ssm):
            h = h + block.mixer.prefill(block.norm(h), conv, state.conv_pos, ssm).to(h.dtype)
        mamba_ops.advance_(state.conv_pos, input_ids.shape[1], self.config.d_conv)
        return self.lm_head(h[:, -1:] if last_only else h)

    @torch.no_grad()
    def step(self, input_ids: torch.Tensor, state: MambaInferenceState) -> torch.Tensor:
        """input_ids [B] -> logits [B, V]; one token. No host sync: safe to capture in a CUDA graph.

        Same arithmetic as prefill, arranged for fewer launches: each block's residual add is fused with
        the next block's pre-norm (the last one with the final norm) in one add_rms_norm."""
        eps = self.config.rms_norm_eps
        with stage("embed"):
            h = self.embed(input_ids).to(residual_dtype(self.dtype))  # [B, d_model]
            x = self.layers[0].norm(h)
        next_norms = [block.norm.weight for block in self.layers[1:]] + [self.norm_f.weight]
        for block, w_next, conv, ssm, taps in zip(self.layers, next_norms, state.conv, state.ssm, state.taps,
                                                  strict=True):
            out = block.mixer.step(x, conv, state.conv_pos, ssm, taps, state.out_slices)  # [(s,) B, d_model]
            # Counted with out_proj in profiles: the residual add that ends the block.
            with stage("mamba.out_proj"):
                h, x = self.add_rms_norm(h, out, w_next, eps)
        mamba_ops.advance_(state.conv_pos, 1, self.config.d_conv)
        with stage("lm_head"):
            # float32 logits straight from the GEMM's accumulator (DecodeLM.head_logits), as the TTT models do:
            # rounding them to fp16 and casting after cost a copy that read 51 MB and wrote 103 MB a step at
            # B = 512 (38 us of a 5.5 ms mamba-1.4b step on the H200, ab_step_h200_0f48b6d/profile_float16/).
            return self.head_logits(x)
