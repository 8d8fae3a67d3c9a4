"""The TTT language model (M1 = TTT-Linear, M2 = TTT-MLP), numerically the published model.

Reference: test-time-training/ttt-lm-pytorch `ttt.py`, class TTTForCausalLM (DESIGN section 3).
Per block (Mamba backbone: pre_conv, share_qk, use_gate):
    h = h + Conv(RMSNorm(h))                       depthwise causal conv, width 4, with bias
    h = h + TTT(RMSNorm(h))                        the TTT layer below
    h = h + SwiGLU(RMSNorm(h))
TTT layer on x = RMSNorm(h):
    [q0 | v | g | lr] = x @ in_proj                one fused projection (q and k share q0)
    q = conv_q(q0), k = conv_k(q0)                 separate depthwise causal convs over one ring of q0
    q, k = rotary(q, k) at position t mod b        interleaved pairs (ttt.py's permute_qk convention)
    eta = ttt_base_lr * sigmoid(lr + lr_bias) / f  per head, per token
    z = inner_loop(q, k, v, eta)                   ops.ttt_linear / ops.ttt_mlp: q + LN(f_W(q))
    out = o_proj(gelu_tanh(g) * LayerNorm(z))
Transformer backbone (all three flags off): separate q and k projections, no convs, no gate.
The inner loop implementation is chosen by `inner_net` (ttt_decode.registry).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
from torch import nn

from ttt_decode import registry
from ttt_decode.configs import TTTConfig
from ttt_decode.errors import UserError
from ttt_decode.models.common import (
    CausalConv1d,
    DecodeLM,
    RMSNorm,
    SwiGLU,
    check_ids,
    check_triton_usable,
    residual_dtype,
    stage,
)
from ttt_decode.ops import split_k, ttt_block, ttt_linear, ttt_mlp
from ttt_decode.ops.conv_ring import ring_prefill
from ttt_decode.ops.ttt_block import apply_rotary, eta_of
from ttt_decode.ops.ttt_common import (
    DualCache,
    GateNorm,
    PrimalCache,
    TTTState,
    inner_step_cost,
    pick_step,
    pick_step_qk,
    token_coeffs,
)
from ttt_decode.ops.ttt_prefill_graph import check_switch as prefill_graph_switch
from ttt_decode.ops.ttt_prefill_graph import prefill_graphs

INIT_STD = 0.02


def ttt_block_triton():
    """ops.ttt_block_triton, imported where a model asks for it (it needs Triton at import)."""
    from ttt_decode.ops import ttt_block_triton as module

    return module


def rotary_cos_sin(positions: torch.Tensor, head_dim: int, theta: float):
    """cos, sin [N, f/2] in float32 for integer positions [N] (computed in float32, as ttt.py does)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=positions.device) / head_dim))
    angles = positions.to(torch.float32)[:, None] * inv_freq[None, :]
    return angles.cos(), angles.sin()


@dataclass
class TTTLayerState:
    ttt: TTTState
    cache: DualCache | PrimalCache
    conv_pre: torch.Tensor | None  # [B, W, D] ring (ops.conv_ring)
    # [B, W, D]: the q and k convs' one ring. Both convolve q0, so two rings would always hold the same.
    conv_qk: torch.Tensor | None
    # The layer's conv weights tap-major, [W, D] each, by conv ("pre", "q", "k"; TTTBlock.convs): contiguous
    # copies of the parameters [D, W] transposed, made with the state and refreshed by reset_state as the
    # fast weights are, so that the fused kernels read each tap as one contiguous row (ops.ttt_block).
    # Not per sequence: left out of tensors().
    taps: dict[str, torch.Tensor] = field(default_factory=dict)
    # int32 [B] zeros, one tensor shared by every layer (ops.ttt_common.GateNorm's counters) where the layer's
    # kernel does the post-norm and gate itself; None elsewhere. Zero between calls: left out of tensors().
    row_counters: torch.Tensor | None = None
    # K slices of the MLP's down projection in a step (ops.split_k.slices_for, fixed with the batch): with
    # s > 1 a block's step returns its down output as s partial sums [s, B, D] that the next block's first
    # kernel (or the step's tail) adds into the residual stream.
    down_slices: int = 1

    def tensors(self):
        convs = {n: t for n, t in (("conv_pre", self.conv_pre), ("conv_qk", self.conv_qk)) if t is not None}
        cache = {f"cache.{n}": t for n, t in self.cache.tensors().items() if n != "pos"}
        return {**{f"ttt.{n}": t for n, t in self.ttt.tensors().items()}, **cache, **convs}


@dataclass
class TTTInferenceState:
    """Everything a TTT LM decode carries between tokens, for one batch.

    pos [1] int64: position inside the mini-batch, shared by every layer's cache; conv_pos [1] int64:
    the slot of the oldest input in every causal conv's ring. Both advanced once per token by the model
    (inside the CUDA graph). Layout: DESIGN section 10.
    """

    pos: torch.Tensor
    layers: list[TTTLayerState]
    batch: int
    state_dtype: torch.dtype
    conv_pos: torch.Tensor | None = None
    # Rotary factors of the b mini-batch positions (q and k rotate by t mod b), float32 [b, f/2]: a
    # step looks its row up instead of computing cos/sin every token.
    rope_cos: torch.Tensor | None = None
    rope_sin: torch.Tensor | None = None
    # [B, D] zeros in the residual dtype, never written: the first block's residual (h = 0 + embedding).
    # A torch.zeros in the step was a fill kernel every token in the CUDA graph.
    zero_residual: torch.Tensor | None = None
    # [s, B, D] in the weights' dtype where the layers' down_slices s > 1: the first block's pending residual
    # in the shape every other block gets (the embedding written into part 0, the others zeros, never
    # written), so that torch.compile still compiles the block once.
    embed_parts: torch.Tensor | None = None

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for layer in self.layers for t in layer.tensors().values())


ENV_FUSED_GATE_NORM = "TTT_DECODE_FUSED_GATE_NORM"
ENV_FUSED_SWIGLU = "TTT_DECODE_FUSED_SWIGLU"


def fused_swiglu_switch() -> bool:
    """TTT_DECODE_FUSED_SWIGLU: 1 runs the MLP's gate_up product and silu * up as one kernel in the decode step of
    a model with Triton kernels (ops.swiglu_gemm: one launch a layer less); 0 (the default, until a GPU has timed
    it against cuBLAS) keeps cuBLAS's product and the elementwise kernel. Another value is a one-line error,
    raised before anything is allocated."""
    value = os.environ.get(ENV_FUSED_SWIGLU, "0")
    if value not in ("0", "1"):
        raise UserError(f"{ENV_FUSED_SWIGLU}={value!r} is not 0 or 1 (1: the MLP's gate_up product and its "
                        f"activation in one kernel; 0, the default: cuBLAS and an elementwise kernel)")
    return value == "1"


def fused_gate_norm_switch() -> bool:
    """TTT_DECODE_FUSED_GATE_NORM: 1 (the default) hands the post-norm and gate to the fused dual step, whose
    dispatcher folds them into its kernel where that measured no slower (one launch a layer less: M2 from
    B = 512) and runs gate_norm's kernel after it elsewhere; 0 calls gate_norm's kernel from the model, as
    before (for A/B timings). Another value is a one-line error, raised before anything is allocated."""
    value = os.environ.get(ENV_FUSED_GATE_NORM, "1")
    if value not in ("0", "1"):
        raise UserError(f"{ENV_FUSED_GATE_NORM}={value!r} is not 0 or 1 (1: the fused TTT dual step takes the "
                        f"post-norm and gate, 0: the model calls gate_norm's kernel); unset it for the default, 1")
    return value == "1"


class TTTLayer(nn.Module):
    def __init__(self, config: TTTConfig, mlp: bool, form: str, impl: str, dtype=None, device=None,
                 fuse_gate_norm: bool = True):
        super().__init__()
        c = config
        self.config = c
        self.mlp, self.form, self.impl = mlp, form, impl
        self.op = ttt_mlp if mlp else ttt_linear
        # Resolved once here: the step traced by torch.compile must not import modules.
        self.decode_step = pick_step(self.op.__name__, impl, form == "dual")
        # The same step with qk_prep folded into its kernel (Triton dual kernels; None elsewhere).
        self.decode_step_qk = pick_step_qk(self.op.__name__, impl, form == "dual") if config.share_qk else None
        # ... which then also takes the post-norm and gate (GateNorm), given the state's row counters.
        self.fuse_gate_norm = self.decode_step_qk is not None and fuse_gate_norm
        D, H, f = c.hidden_size, c.num_heads, c.head_dim
        F_ = 4 * f if mlp else f
        kw = dict(dtype=dtype, device=device)
        # Row blocks of the fused input projection, in order.
        self.proj_names = ["q"] + ([] if c.share_qk else ["k"]) + ["v"] + (["g"] if c.use_gate else [])
        self.in_proj = nn.Linear(D, len(self.proj_names) * D + H, bias=False, **kw)
        self.lr_bias = nn.Parameter(torch.zeros(H, **kw))
        if c.share_qk:
            self.conv_q = CausalConv1d(D, c.conv_kernel, **kw)
            self.conv_k = CausalConv1d(D, c.conv_kernel, **kw)
        self.ttt_norm_weight = nn.Parameter(torch.ones(H, f, **kw))
        self.ttt_norm_bias = nn.Parameter(torch.zeros(H, f, **kw))
        self.learnable_token_idx = nn.Parameter(torch.zeros(c.mini_batch_size, **kw))
        self.W1 = nn.Parameter(torch.randn(H, f, F_, **kw) * INIT_STD)
        self.b1 = nn.Parameter(torch.zeros(H, F_, **kw))
        if mlp:
            self.W2 = nn.Parameter(torch.randn(H, F_, f, **kw) * INIT_STD)
            self.b2 = nn.Parameter(torch.zeros(H, f, **kw))
        self.post_norm = nn.LayerNorm(D, eps=1e-6, **kw)
        self.o_proj = nn.Linear(D, D, bias=False, **kw)

    def fast_weights(self):
        return (self.W1, self.b1, self.W2, self.b2) if self.mlp else (self.W1, self.b1)

    def _project(self, x):
        """x [B, N, D] -> dict of q, (k), v, (g) [B, N, D] and lr [B, N, H]."""
        D = self.config.hidden_size
        parts = self.in_proj(x).split([D] * len(self.proj_names) + [self.config.num_heads], dim=-1)
        out = dict(zip(self.proj_names, parts[:-1]))
        out["lr"] = parts[-1]
        return out

    def _eta(self, lr):
        return eta_of(lr, self.lr_bias, self.config.ttt_base_lr, self.config.head_dim)

    def _columns(self, name: str) -> slice:
        """The columns of the fused projection's output that hold `name` (q, k, v, g or lr)."""
        D = self.config.hidden_size
        i = self.proj_names.index(name) if name != "lr" else len(self.proj_names)
        return slice(i * D, i * D + (D if name != "lr" else self.config.num_heads))

    def _heads(self, x):
        """[B, N, D] -> [B, H, N, f]."""
        return x.unflatten(-1, (self.config.num_heads, self.config.head_dim)).transpose(1, 2)

    def _finish(self, z, g, gate_norm):
        """Inner-loop output z [..., D] (in the activations' dtype), gate columns g or None ->
        o_proj(gelu(g) * LayerNorm(z)); gate_norm: ops.ttt_block's or its fused kernel (2-D rows only)."""
        with stage("ttt.gate_norm"):
            y = gate_norm(z, g, self.post_norm.weight, self.post_norm.bias, self.post_norm.eps)
        with stage("ttt.o_proj"):
            return self.o_proj(y)

    def prefill(self, x, ls: TTTLayerState, conv_pos, cos, sin):
        """x [B, N, D] normed input; cos, sin [N, f/2]. Returns [B, N, D]; advances ls (pos restored)."""
        p = self._project(x)
        if self.config.share_qk:
            # One ring for both convs: k's reads it without updating it, then q's reads it and leaves the
            # last W inputs in it (what CausalConv1d.forward does with a state).
            q0, cd = p["q"], residual_dtype(p["q"].dtype)
            k = ring_prefill(q0, ls.conv_qk, conv_pos, self.conv_k.weight, self.conv_k.bias, cd, update=False)
            q = ring_prefill(q0, ls.conv_qk, conv_pos, self.conv_q.weight, self.conv_q.bias, cd)
            q, k = q.to(q0.dtype), k.to(q0.dtype)
        else:
            q, k = p["q"], p["k"]
        q, k, v = apply_rotary(self._heads(q), cos, sin), apply_rotary(self._heads(k), cos, sin), self._heads(p["v"])
        eta = self._eta(p["lr"]).transpose(1, 2)  # [B, H, N]
        c = token_coeffs(self.learnable_token_idx)
        z = self.op.prefill(q, k, v, eta, c, self.ttt_norm_weight, self.ttt_norm_bias, ls.ttt, ls.cache,
                            impl=self.impl, advance=False)  # [B, H, N, f]
        return self._finish(z.transpose(1, 2).flatten(2).to(x.dtype), p["g"] if self.config.use_gate else None,
                            ttt_block.gate_norm)

    def step(self, x, ls: TTTLayerState, conv_pos, pos, rope_cos, rope_sin, fused):
        """x [B, D] normed input; pos [1] the mini-batch position, rope_cos/sin [b, f/2] its rotary table;
        fused: the module of the elementwise steps (ops.ttt_block or its Triton kernels). Returns [B, D]."""
        c = self.config
        H, f = c.num_heads, c.head_dim
        with stage("ttt.proj"):
            p = self.in_proj(x)  # [B, n D + H]
        cols = {n: self._columns(n) for n in (*self.proj_names, "lr")}
        if self.decode_step_qk is not None:
            # One kernel: the q/k convs, rotary, eta and c in its prologue, then the inner step. It reads v
            # from p's columns (no view of p before it: see ops.ttt_triton_common.qk_step_op).
            gn = None
            if self.fuse_gate_norm and ls.row_counters is not None:
                # ... and the post-norm and gate (in the kernel, after a row's last head, where it folds them).
                norm = self.post_norm
                gn = GateNorm(norm.weight, norm.bias, norm.eps, cols["g"].start if c.use_gate else -1, ls.row_counters)
            with stage("ttt.inner_loop"):
                z = self.decode_step_qk(
                    p, ls.conv_qk, conv_pos, ls.taps["q"], self.conv_q.bias, ls.taps["k"], self.conv_k.bias,
                    rope_cos, rope_sin, pos, self.lr_bias, self.learnable_token_idx, c.ttt_base_lr, H,
                    cols["lr"].start, cols["v"].start, self.ttt_norm_weight, self.ttt_norm_bias, ls.ttt, ls.cache,
                    advance=False, gate_norm=gn)
            if gn is not None:
                with stage("ttt.o_proj"):
                    return self.o_proj(z)  # z is o_proj's input here
            return self._finish(z.flatten(1).to(x.dtype), p[:, cols["g"]] if c.use_gate else None, fused.gate_norm)
        with stage("ttt.conv_qk"):
            if c.share_qk:
                q, k, eta, cc = fused.qk_prep(
                    p, ls.conv_qk, conv_pos, ls.taps["q"], self.conv_q.bias, ls.taps["k"], self.conv_k.bias,
                    rope_cos, rope_sin, pos, self.lr_bias, self.learnable_token_idx, c.ttt_base_lr, H,
                    cols["lr"].start)
            else:
                cos, sin = rope_cos.index_select(0, pos), rope_sin.index_select(0, pos)  # [1, f/2]
                q = apply_rotary(p[:, cols["q"]].view(-1, H, 1, f), cos, sin).squeeze(2)  # [B, H, f]
                k = apply_rotary(p[:, cols["k"]].view(-1, H, 1, f), cos, sin).squeeze(2)
                eta, cc = self._eta(p[:, cols["lr"]]), token_coeffs(self.learnable_token_idx)  # [B, H], [b]
        v = p[:, cols["v"]].view(-1, H, f)
        with stage("ttt.inner_loop"):
            z = self.decode_step(q, k, v, eta, cc, self.ttt_norm_weight, self.ttt_norm_bias,
                                 ls.ttt, ls.cache, advance=False)  # [B, H, f]
        return self._finish(z.flatten(1).to(x.dtype), p[:, cols["g"]] if c.use_gate else None, fused.gate_norm)


class TTTBlock(nn.Module):
    def __init__(self, config: TTTConfig, mlp: bool, form: str, impl: str, dtype=None, device=None,
                 fuse_gate_norm: bool = True, fuse_swiglu: bool = False):
        super().__init__()
        kw = dict(dtype=dtype, device=device)
        D, eps = config.hidden_size, config.rms_norm_eps
        self.pre_conv = config.pre_conv
        if config.pre_conv:
            self.conv_norm = RMSNorm(D, eps, **kw)
            self.conv = CausalConv1d(D, config.conv_kernel, **kw)
        self.seq_norm = RMSNorm(D, eps, **kw)
        self.ttt = TTTLayer(config, mlp, form, impl, fuse_gate_norm=fuse_gate_norm, **kw)
        self.ffn_norm = RMSNorm(D, eps, **kw)
        self.mlp = SwiGLU(D, config.intermediate_size, **kw)
        self.mlp.fused_act = fuse_swiglu and impl == "triton"
        # The elementwise steps of a token (ops.ttt_block): fused Triton kernels where the inner loop runs
        # Triton kernels too (CUDA, or the interpreter in tests), the PyTorch reference otherwise.
        self.fused = ttt_block_triton() if impl == "triton" else ttt_block

    def convs(self) -> dict[str, CausalConv1d]:
        """The block's causal convs by name (TTTLayerState.taps holds their weights tap-major)."""
        convs = {"pre": self.conv} if self.pre_conv else {}
        if self.ttt.config.share_qk:
            convs.update(q=self.ttt.conv_q, k=self.ttt.conv_k)
        return convs

    def prefill(self, h, ls, conv_pos, cos, sin):
        if self.pre_conv:
            h = h + self.conv(self.conv_norm(h), ls.conv_pre, conv_pos).to(h.dtype)
        h = h + self.ttt.prefill(self.seq_norm(h), ls, conv_pos, cos, sin).to(h.dtype)
        return h + self.mlp(self.ffn_norm(h)).to(h.dtype)

    def step(self, h, delta, ls, conv_pos, pos, rope_cos, rope_sin):
        """h [B, D] residual stream, delta [B, D] the previous block's MLP output not yet added, or its K-split
        partial sums [s, B, D] (ls.down_slices s > 1) -> (h, this block's MLP output, in the same form): the
        add lands in the next block's first kernel."""
        with stage("pre_conv"):
            if self.pre_conv:
                h, x = self.fused.pre_conv_step(h, delta, self.conv_norm.weight, ls.conv_pre, conv_pos,
                                                ls.taps["pre"], self.conv.bias, self.seq_norm.weight,
                                                self.seq_norm.eps)
            else:
                h = h if delta is None else h + split_k.sum_parts(delta, h.dtype)
                x = self.seq_norm(h)
        h = h + self.ttt.step(x, ls, conv_pos, pos, rope_cos, rope_sin, self.fused).to(h.dtype)
        with stage("mlp"):
            return h, self.mlp.step_parts(self.ffn_norm(h), ls.down_slices)


class TTTLM(DecodeLM):
    """TTT language model with a chosen inner loop (inner_net, e.g. 'mlp_2_dual_triton')."""

    def __init__(self, config: TTTConfig, inner_net: str = "mlp_2_dual", dtype=torch.float16, device=None):
        super().__init__()
        chosen = registry.get(inner_net, "ttt")
        kind, form, impl = chosen.ttt_layer_type, chosen.form, chosen.op_impl
        check_triton_usable(inner_net, device)
        if kind == "mlp":
            ttt_mlp.naive.check_convention()  # TTT_DECODE_M2_DEFER_W1, before anything is allocated
        fuse_gate_norm = fused_gate_norm_switch()
        split_k.check_switch(config.intermediate_size, torch.empty((), dtype=dtype).element_size())
        prefill_graph_switch()
        fuse_swiglu = fused_swiglu_switch()
        if config.ttt_layer_type is not None and config.ttt_layer_type != kind:
            raise UserError(f"inner net {inner_net!r} is TTT-{kind.capitalize()} but the model {config.name!r} "
                            f"was built as TTT-{config.ttt_layer_type.capitalize()}; pick an inner net "
                            f"mlp_{1 if config.ttt_layer_type == 'linear' else 2}_*")
        self.config, self.inner_net = config, inner_net
        self.kind, self.form, self.impl = kind, form, impl
        kw = dict(dtype=dtype, device=device)
        self.embed = nn.Embedding(config.padded_vocab_size, config.hidden_size, **kw)
        nn.init.normal_(self.embed.weight, std=INIT_STD)
        self.layers = nn.ModuleList(TTTBlock(config, kind == "mlp", form, impl, fuse_gate_norm=fuse_gate_norm,
                                             fuse_swiglu=fuse_swiglu, **kw)
                                    for _ in range(config.num_layers))
        self.norm_f = RMSNorm(config.hidden_size, config.rms_norm_eps, **kw)
        if not config.tie_word_embeddings:
            self.lm_head_weight = nn.Parameter(torch.randn(config.padded_vocab_size, config.hidden_size,
                                                           **kw) * INIT_STD)
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=INIT_STD)

    @property
    def prefill_multiple(self) -> int:
        return self.config.mini_batch_size  # whole mini-batches go through the dual form's matrices

    def compile_regions(self):
        """What torch.compile compiles (decode.engine.compiled_step): the repeated blocks, compiled once and
        reused, and the step's tail after them (eager, its adds, norm and position updates were ~15
        small kernels a step, each a launch in the CUDA graph)."""
        return [(block, "step") for block in self.layers] + [(self, "finish_step")]

    # ---- inference state ----
    def allocate_state(self, batch: int, state_dtype: torch.dtype | None = None) -> TTTInferenceState:
        if not isinstance(batch, int) or batch < 1:
            raise UserError(f"batch must be a positive integer, got {batch!r}")
        c = self.config
        state_dtype = state_dtype or self.dtype
        pos = torch.zeros(1, dtype=torch.int64, device=self.device)
        cache_cls = DualCache if self.form == "dual" else PrimalCache

        def conv():
            return torch.zeros(batch, c.conv_kernel, c.hidden_size, dtype=self.dtype, device=self.device)  # [B, W, D]

        layers = []
        fused = any(block.ttt.fuse_gate_norm for block in self.layers)
        counters = torch.zeros(batch, dtype=torch.int32, device=self.device) if fused else None
        slices = split_k.slices_for(batch, c.hidden_size, c.intermediate_size, self.device,
                                    torch.empty((), dtype=self.dtype).element_size())
        for block in self.layers:
            ttt = TTTState.from_params(batch, state_dtype, *block.ttt.fast_weights())
            layers.append(TTTLayerState(
                ttt=ttt, cache=cache_cls.empty_like_state(ttt, c.mini_batch_size, pos=pos),
                conv_pre=conv() if c.pre_conv else None, conv_qk=conv() if c.share_qk else None,
                taps={n: m.weight.detach().t().contiguous() for n, m in block.convs().items()},
                row_counters=counters if block.ttt.fuse_gate_norm else None, down_slices=slices))
        cos, sin = rotary_cos_sin(torch.arange(c.mini_batch_size, device=self.device), c.head_dim, c.rope_theta)
        zero = torch.zeros(batch, c.hidden_size, dtype=residual_dtype(self.dtype), device=self.device)
        parts = (torch.zeros(slices, batch, c.hidden_size, dtype=self.dtype, device=self.device) if slices > 1
                 else None)
        return TTTInferenceState(pos=pos, layers=layers, batch=batch, state_dtype=state_dtype,
                                 conv_pos=torch.zeros(1, dtype=torch.int64, device=self.device),
                                 rope_cos=cos, rope_sin=sin, zero_residual=zero, embed_parts=parts)

    @torch.no_grad()
    def reset_state(self, state: TTTInferenceState) -> None:
        state.pos.zero_()
        state.conv_pos.zero_()
        for block, ls in zip(self.layers, state.layers):
            for dst, src in zip((ls.ttt.W1, ls.ttt.b1, ls.ttt.W2, ls.ttt.b2), block.ttt.fast_weights()):
                if dst is not None:
                    dst.copy_(src.unsqueeze(0).expand_as(dst))
            for name, conv in block.convs().items():
                ls.taps[name].copy_(conv.weight.t())
            for name, t in ls.tensors().items():
                if not name.startswith("ttt."):
                    t.zero_()

    def step_options(self, state: TTTInferenceState) -> dict:
        return {"down_slices": state.layers[0].down_slices if state.layers else 1,
                "fused_swiglu": any(block.mlp.fused_act for block in self.layers),
                "fused_gate_norm": any(block.ttt.fuse_gate_norm for block in self.layers)}

    def state_bytes_per_seq(self, state_dtype: torch.dtype | None = None) -> int:
        c, f = self.config, self.config.head_dim
        F_ = 4 * f if self.kind == "mlp" else f
        weights = c.num_heads * ((f * F_ + F_) + ((F_ * f + f) if self.kind == "mlp" else 0))
        per_row = f + F_ + ((F_ + f) if self.kind == "mlp" else 0)
        cache = c.num_heads * c.mini_batch_size * per_row if self.form == "dual" else weights
        item = torch.empty((), dtype=state_dtype or self.dtype).element_size()
        n_conv = int(c.pre_conv) + int(c.share_qk)  # the pre-conv's ring, the one q and k share
        conv = n_conv * c.hidden_size * c.conv_kernel * torch.empty((), dtype=self.dtype).element_size()
        return c.num_layers * ((weights + cache) * item + conv)

    def decode_cost(self, batch: int, state_dtype: torch.dtype | None = None) -> dict:
        c = self.config
        s_item = torch.empty((), dtype=state_dtype or self.dtype).element_size()
        w_item = torch.empty((), dtype=self.dtype).element_size()
        inner = inner_step_cost(self.kind == "mlp", self.form, c.num_heads, c.head_dim, c.mini_batch_size,
                                s_item, w_item)
        # Each ring's W-1 newest slots are read and one slot written: W D items. The q and k convs share
        # one ring (their taps are read once for both).
        conv = (int(c.pre_conv) + int(c.share_qk)) * c.hidden_size * c.conv_kernel * w_item
        state_bytes = batch * c.num_layers * (inner["bytes"] + conv)
        weight_bytes = self.weight_bytes()
        matmul_params = sum(m.weight.numel() for m in self.modules() if isinstance(m, nn.Linear))
        matmul_params += c.padded_vocab_size * c.hidden_size  # LM head
        flops = batch * (2 * matmul_params + c.num_layers * inner["flops"])
        return {"weight_bytes": weight_bytes, "state_bytes": state_bytes, "bytes": weight_bytes + state_bytes,
                "flops": flops}

    # ---- forward passes ----
    @torch.no_grad()
    def prefill(self, input_ids: torch.Tensor, state: TTTInferenceState, last_only: bool = False) -> torch.Tensor:
        """input_ids [B, N] -> logits [B, N, V] ([B, 1, V] with last_only); advances the state by N tokens."""
        check_ids(input_ids, 2, state.batch)
        b = self.config.mini_batch_size
        start = int(state.pos.item())
        N = input_ids.shape[1]
        positions = (start + torch.arange(N, device=input_ids.device)) % b
        cos, sin = state.rope_cos.index_select(0, positions), state.rope_sin.index_select(0, positions)  # [N, f/2]
        h = self.embed(input_ids).to(residual_dtype(self.dtype))
        with prefill_graphs():  # one CUDA graph of a whole mini-batch serves every layer (ttt_prefill_graph.py)
            for block, ls in zip(self.layers, state.layers):
                h = block.prefill(h, ls, state.conv_pos, cos, sin)
        state.pos.fill_((start + N) % b)
        state.conv_pos.copy_((state.conv_pos + N) % self.config.conv_kernel)
        return self.lm_head(h[:, -1:] if last_only else h)

    @torch.no_grad()
    def step(self, input_ids: torch.Tensor, state: TTTInferenceState) -> torch.Tensor:
        """input_ids [B] -> logits [B, V]; one token. No host sync: safe to capture in a CUDA graph."""
        with stage("embed"):
            # The embedding goes in as the first block's pending residual (h = 0 + embedding, exact), so
            # every block gets the same kinds of arguments and torch.compile compiles the block once; with
            # delta=None the first block's guards differed and it was compiled a second time.
            if state.embed_parts is not None:  # the blocks' down outputs come as K-split partial sums
                delta = state.embed_parts
                torch.index_select(self.embed.weight, 0, input_ids, out=delta[0])  # the embedding, one launch
            else:
                delta = self.embed(input_ids)
            h = state.zero_residual  # read only: every block's step returns a new residual
            if h is None:  # a state built without it
                h = torch.zeros(delta.shape[-2:], dtype=residual_dtype(self.dtype), device=delta.device)
        for block, ls in zip(self.layers, state.layers):
            h, delta = block.step(h, delta, ls, state.conv_pos, state.pos, state.rope_cos, state.rope_sin)
        x = self.finish_step(h, delta, state)
        with stage("lm_head"):
            return self.head_logits(x)

    def finish_step(self, h, delta, state: TTTInferenceState) -> torch.Tensor:
        """After the last block: its MLP output added, the final norm (-> the head's input x), both
        positions advanced."""
        x = self.norm_f(h + split_k.sum_parts(delta, h.dtype))
        state.pos.copy_((state.pos + 1) % self.config.mini_batch_size)
        state.conv_pos.copy_((state.conv_pos + 1) % self.config.conv_kernel)
        return x
