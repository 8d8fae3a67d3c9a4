"""Transformer baseline (Llama-style), the model whose decode cost grows with context.

Per block: h = h + o_proj(attn(rotary(q), rotary(k), v)) on RMSNorm(h), then h + SwiGLU(RMSNorm(h)).
Rotary embedding in the Llama (rotate-half) convention at the absolute position; tied LM head.

Decode keeps a static KV cache [B, H, T, f] per layer, allocated once for a capacity T (prompt +
generation). The step writes this token's k, v at the device-side position and attends over the
first pos + 1 rows only (ops.attention: the Triton kernel reads exactly those rows), so one CUDA graph
serves every position while the work per token grows linearly with the context, as it does for any
Transformer. `inner_net` picks the attention implementation: attn_ref (PyTorch, masked over the whole
capacity) or attn_triton (the kernel).

`hf_llama_config_kwargs` and `hf_llama_state_dict` map the model onto transformers' LlamaForCausalLM (same
logits): the one home of that mapping, used by the hf:llama-* baseline (models/baselines.py) and its tests.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ttt_decode import registry
from ttt_decode.configs import TransformerConfig
from ttt_decode.errors import UserError
from ttt_decode.models.common import (
    DecodeLM,
    RMSNorm,
    SwiGLU,
    check_triton_usable,
    residual_dtype,
    stage,
)
from ttt_decode.ops.attention import decode_attention

INIT_STD = 0.02


def llama_rotary(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """Rotate halves (x[j], x[j + f/2]) by angle pos * theta^(-2j/f). x [..., N, f]; positions [N]."""
    f = x.shape[-1]
    inv_freq = 1.0 / (theta ** (torch.arange(0, f, 2, dtype=torch.float32, device=x.device) / f))
    angles = positions.to(torch.float32)[:, None] * inv_freq[None, :]  # [N, f/2]
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    x1, x2 = x[..., : f // 2], x[..., f // 2:]
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


@dataclass
class KVState:
    """pos [1] int64: tokens already in the cache (the next token's position). k, v: per layer [B,H,T,f]."""

    pos: torch.Tensor
    k: list[torch.Tensor]
    v: list[torch.Tensor]
    batch: int
    capacity: int

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.k + self.v)


class Attention(nn.Module):
    def __init__(self, config: TransformerConfig, impl: str, dtype=None, device=None):
        super().__init__()
        D = config.hidden_size
        self.config, self.impl = config, impl
        self.qkv = nn.Linear(D, 3 * D, bias=False, dtype=dtype, device=device)
        self.o_proj = nn.Linear(D, D, bias=False, dtype=dtype, device=device)

    def _heads(self, x):
        """[B, N, D] -> [B, H, N, f]."""
        return x.unflatten(-1, (self.config.num_heads, -1)).transpose(1, 2)

    def prefill(self, x, k_cache, v_cache, start: int):
        """x [B, N, D] normed; writes rows start..start+N of the caches; causal attention over them."""
        N = x.shape[1]
        q, k, v = (self._heads(t) for t in self.qkv(x).chunk(3, dim=-1))
        positions = torch.arange(start, start + N, device=x.device)
        q, k = llama_rotary(q, positions, self.config.rope_theta), llama_rotary(k, positions, self.config.rope_theta)
        k_cache[:, :, start:start + N] = k.to(k_cache.dtype)
        v_cache[:, :, start:start + N] = v.to(v_cache.dtype)
        keys = torch.arange(start + N, device=x.device)
        mask = keys[None, :] <= positions[:, None]  # [N, start+N]
        y = F.scaled_dot_product_attention(q, k_cache[:, :, : start + N].to(q.dtype),
                                           v_cache[:, :, : start + N].to(q.dtype), attn_mask=mask)
        return self.o_proj(y.transpose(1, 2).flatten(2))

    def step(self, x, k_cache, v_cache, pos):
        """x [B, D] normed; pos [1] int64 device tensor. Returns [B, D]."""
        with stage("attn.qkv"):
            q, k, v = (self._heads(t.unsqueeze(1)) for t in self.qkv(x).chunk(3, dim=-1))  # [B, H, 1, f]
            q = llama_rotary(q, pos, self.config.rope_theta).squeeze(2)
            k = llama_rotary(k, pos, self.config.rope_theta)
            k_cache.index_copy_(2, pos, k.to(k_cache.dtype))
            v_cache.index_copy_(2, pos, v.to(v_cache.dtype))
        with stage("attn.attention"):
            y = decode_attention(q, k_cache, v_cache, pos + 1, impl=self.impl)  # [B, H, f]
        with stage("attn.o_proj"):
            return self.o_proj(y.flatten(1))


class TransformerBlock(nn.Module):
    def __init__(self, config: TransformerConfig, impl: str, dtype=None, device=None):
        super().__init__()
        kw = dict(dtype=dtype, device=device)
        self.attn_norm = RMSNorm(config.hidden_size, config.rms_norm_eps, **kw)
        self.attn = Attention(config, impl, **kw)
        self.mlp_norm = RMSNorm(config.hidden_size, config.rms_norm_eps, **kw)
        self.mlp = SwiGLU(config.hidden_size, config.intermediate_size, **kw)

    def step(self, h, k_cache, v_cache, pos):
        """h [B, D] residual stream -> h after this block; writes row pos of the caches."""
        h = h + self.attn.step(self.attn_norm(h), k_cache, v_cache, pos).to(h.dtype)
        with stage("mlp"):
            return h + self.mlp(self.mlp_norm(h)).to(h.dtype)


class TransformerLM(DecodeLM):
    uses_kv_cache = True

    def __init__(self, config: TransformerConfig, inner_net: str | None = None, dtype=torch.float16, device=None):
        super().__init__()
        inner_net = inner_net or registry.default("transformer", torch.device(device or "cpu").type)
        attention = registry.get(inner_net, "transformer")
        check_triton_usable(inner_net, device)
        self.config, self.inner_net = config, inner_net
        kw = dict(dtype=dtype, device=device)
        self.embed = nn.Embedding(config.padded_vocab_size, config.hidden_size, **kw)
        self.layers = nn.ModuleList(TransformerBlock(config, attention.op_impl, **kw)
                                    for _ in range(config.num_layers))
        self.norm_f = RMSNorm(config.hidden_size, config.rms_norm_eps, **kw)
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=INIT_STD)

    def allocate_state(self, batch: int, state_dtype: torch.dtype | None = None,
                       max_seq_len: int | None = None) -> KVState:
        if not isinstance(batch, int) or batch < 1:
            raise UserError(f"batch must be a positive integer, got {batch!r}")
        c = self.config
        T = max_seq_len or c.max_seq_len
        shape = (batch, c.num_heads, T, c.head_dim)
        kw = dict(dtype=state_dtype or self.dtype, device=self.device)
        return KVState(torch.zeros(1, dtype=torch.int64, device=self.device),
                       [torch.zeros(shape, **kw) for _ in self.layers], [torch.zeros(shape, **kw) for _ in self.layers],
                       batch, T)

    def reset_state(self, state: KVState) -> None:
        # Rows past pos are never read, so only the position needs resetting.
        state.pos.zero_()

    def state_bytes_per_seq(self, state_dtype: torch.dtype | None = None, context: int | None = None) -> int:
        c = self.config
        item = torch.empty((), dtype=state_dtype or self.dtype).element_size()
        return 2 * c.num_layers * c.hidden_size * (context or c.max_seq_len) * item

    def decode_cost(self, batch: int, state_dtype: torch.dtype | None = None, context: int | None = None) -> dict:
        """Per step at a context of `context` tokens (default: half the capacity): all weights once,
        K and V rows 0..context read, one row written."""
        c = self.config
        context = context or c.max_seq_len // 2
        item = torch.empty((), dtype=state_dtype or self.dtype).element_size()
        kv = 2 * c.num_layers * c.hidden_size * (context + 1) * item
        matmul_params = sum(m.weight.numel() for m in self.modules() if isinstance(m, nn.Linear))
        matmul_params += c.padded_vocab_size * c.hidden_size
        flops = batch * (2 * matmul_params + c.num_layers * 4 * c.hidden_size * context)
        weight_bytes = self.weight_bytes()
        return {"weight_bytes": weight_bytes, "state_bytes": batch * kv, "bytes": weight_bytes + batch * kv,
                "flops": flops, "context": context}

    def compile_regions(self):
        """The repeated blocks torch.compile compiles once and reuses (decode.engine.compiled_step): the
        whole step compiled as one graph took 26-30 s of cold start on the H200."""
        return [(block, "step") for block in self.layers]

    @torch.no_grad()
    def prefill(self, input_ids: torch.Tensor, state: KVState, last_only: bool = False) -> torch.Tensor:
        if input_ids.dim() != 2 or input_ids.shape[0] != state.batch or input_ids.shape[1] < 1:
            raise UserError(f"input_ids must be [batch={state.batch}, N>=1], got {tuple(input_ids.shape)}")
        start, N = int(state.pos.item()), input_ids.shape[1]
        if start + N > state.capacity:
            raise UserError(f"{start + N} tokens exceed the KV cache capacity {state.capacity}; "
                            "allocate the state with a larger max_seq_len")
        h = self.embed(input_ids).to(residual_dtype(self.dtype))
        for block, kc, vc in zip(self.layers, state.k, state.v):
            h = h + block.attn.prefill(block.attn_norm(h), kc, vc, start).to(h.dtype)
            h = h + block.mlp(block.mlp_norm(h)).to(h.dtype)
        state.pos.fill_(start + N)
        return self.lm_head(h[:, -1:] if last_only else h)

    @torch.no_grad()
    def step(self, input_ids: torch.Tensor, state: KVState) -> torch.Tensor:
        """input_ids [B] -> logits [B, V]. The caller keeps pos below the capacity (DecodeSession does)."""
        with stage("embed"):
            h = self.embed(input_ids).to(residual_dtype(self.dtype))
        for block, kc, vc in zip(self.layers, state.k, state.v):
            h = block.step(h, kc, vc, state.pos)
        state.pos.add_(1)
        with stage("lm_head"):
            return self.lm_head(h)


def hf_llama_config_kwargs(config: TransformerConfig) -> dict:
    """transformers.LlamaConfig keyword arguments for the same architecture (MHA, SwiGLU, no biases, tied
    head, RMSNorm, default rotary), over the padded vocabulary."""
    return dict(vocab_size=config.padded_vocab_size, hidden_size=config.hidden_size,
                intermediate_size=config.intermediate_size, num_hidden_layers=config.num_layers,
                num_attention_heads=config.num_heads, num_key_value_heads=config.num_heads, hidden_act="silu",
                rms_norm_eps=config.rms_norm_eps, rope_theta=config.rope_theta,
                max_position_embeddings=config.max_seq_len, tie_word_embeddings=True, attention_bias=False,
                mlp_bias=False)


def hf_llama_state_dict(model: TransformerLM) -> dict[str, torch.Tensor]:
    """Our weights under transformers' LlamaForCausalLM names: qkv split into q, k, v and gate_up into gate,
    up (views, no copy); lm_head.weight is the embedding (tied). Loads with strict=True."""
    sd, D, I = model.state_dict(), model.config.hidden_size, model.config.intermediate_size  # noqa: E741
    out = {"model.embed_tokens.weight": sd["embed.weight"], "model.norm.weight": sd["norm_f.weight"],
           "lm_head.weight": sd["embed.weight"]}
    for i in range(model.config.num_layers):
        p, o = f"model.layers.{i}.", f"layers.{i}."
        q, k, v = sd[o + "attn.qkv.weight"].split(D)
        gate, up = sd[o + "mlp.gate_up.weight"].split(I)
        out.update({p + "self_attn.q_proj.weight": q, p + "self_attn.k_proj.weight": k,
                    p + "self_attn.v_proj.weight": v, p + "self_attn.o_proj.weight": sd[o + "attn.o_proj.weight"],
                    p + "mlp.gate_proj.weight": gate, p + "mlp.up_proj.weight": up,
                    p + "mlp.down_proj.weight": sd[o + "mlp.down.weight"],
                    p + "input_layernorm.weight": sd[o + "attn_norm.weight"],
                    p + "post_attention_layernorm.weight": sd[o + "mlp_norm.weight"]})
    return out
