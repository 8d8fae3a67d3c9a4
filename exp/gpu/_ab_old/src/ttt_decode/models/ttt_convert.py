"""Parameter-layout conversion between the published TTT model (ttt.py, TTTForCausalLM) and ours.

The published names and shapes are the exchange format (DESIGN section 3); ours fuses projections:
  ttt.py                                         ours
  model.embed_tokens.weight [V, D]               embed.weight
  model.layers.i.conv.norm.weight                layers.i.conv_norm.weight
  model.layers.i.conv.conv.weight [D, 1, W]      layers.i.conv.weight [D, W]   (and .bias)
  model.layers.i.seq_norm.weight                 layers.i.seq_norm.weight
  ...seq_modeling_block.{q,k,v,g}_proj.weight    layers.i.ttt.in_proj.weight rows [q; k; v; g; lr]
  ...learnable_ttt_lr_weight [H, 1, D]           (last H rows of in_proj)
  ...learnable_ttt_lr_bias [H, 1]                layers.i.ttt.lr_bias [H]
  ...conv_q / conv_k .weight [D, 1, W]           layers.i.ttt.conv_q / conv_k .weight [D, W]
  ...b1 [H, 1, F], b2 [H, 1, f]                  layers.i.ttt.b1 [H, F], b2 [H, f]
  ...W1, W2, ttt_norm_*, learnable_token_idx,    same names under layers.i.ttt.
     post_norm.*, o_proj.weight
  model.layers.i.mlp.{gate,up}_proj.weight       layers.i.mlp.gate_up.weight [2I, D]
  model.layers.i.mlp.down_proj.weight            layers.i.mlp.down.weight
  model.norm.weight                              norm_f.weight
  lm_head.weight (only if untied)                lm_head_weight
"""

from __future__ import annotations

import torch

from ttt_decode.configs import TTTConfig

_SAME = ("W1", "W2", "ttt_norm_weight", "ttt_norm_bias", "learnable_token_idx",
         "post_norm.weight", "post_norm.bias", "o_proj.weight")


def _proj_names(config: TTTConfig):
    return ["q"] + ([] if config.share_qk else ["k"]) + ["v"] + (["g"] if config.use_gate else [])


def expected_published_keys(config: TTTConfig, mlp: bool) -> dict[str, tuple[int, ...]]:
    """Every tensor name of ttt.py's TTTForCausalLM for this config, with its shape."""
    D, H, f, W = config.hidden_size, config.num_heads, config.head_dim, config.conv_kernel
    I = config.intermediate_size  # noqa: E741 (ttt.py's letter for the MLP width)
    F_ = 4 * f if mlp else f
    shapes = {"model.embed_tokens.weight": (config.vocab_size, D), "model.norm.weight": (D,)}
    if not config.tie_word_embeddings:
        shapes["lm_head.weight"] = (config.vocab_size, D)
    for i in range(config.num_layers):
        p = f"model.layers.{i}."
        s = p + "seq_modeling_block."
        shapes.update({p + "seq_norm.weight": (D,), p + "ffn_norm.weight": (D,),
                       p + "mlp.gate_proj.weight": (I, D), p + "mlp.up_proj.weight": (I, D),
                       p + "mlp.down_proj.weight": (D, I)})
        if config.pre_conv:
            shapes.update({p + "conv.norm.weight": (D,), p + "conv.conv.weight": (D, 1, W), p + "conv.conv.bias": (D,)})
        for n in _proj_names(config):
            shapes[s + f"{n}_proj.weight"] = (D, D)
        if config.share_qk:
            for n in ("conv_q", "conv_k"):
                shapes.update({s + f"{n}.weight": (D, 1, W), s + f"{n}.bias": (D,)})
        shapes.update({s + "learnable_ttt_lr_weight": (H, 1, D), s + "learnable_ttt_lr_bias": (H, 1),
                       s + "ttt_norm_weight": (H, f), s + "ttt_norm_bias": (H, f),
                       s + "learnable_token_idx": (config.mini_batch_size,),
                       s + "W1": (H, f, F_), s + "b1": (H, 1, F_),
                       s + "post_norm.weight": (D,), s + "post_norm.bias": (D,), s + "o_proj.weight": (D, D)})
        if mlp:
            shapes.update({s + "W2": (H, F_, f), s + "b2": (H, 1, f)})
    return shapes


def published_to_ours(sd: dict[str, torch.Tensor], config: TTTConfig, mlp: bool) -> dict[str, torch.Tensor]:
    """ttt.py state dict (names/shapes already checked) -> our TTTLM state dict."""
    out = {"embed.weight": sd["model.embed_tokens.weight"], "norm_f.weight": sd["model.norm.weight"]}
    if not config.tie_word_embeddings:
        out["lm_head_weight"] = sd["lm_head.weight"]
    for i in range(config.num_layers):
        p, o = f"model.layers.{i}.", f"layers.{i}."
        s, t = p + "seq_modeling_block.", o + "ttt."
        out[o + "seq_norm.weight"] = sd[p + "seq_norm.weight"]
        out[o + "ffn_norm.weight"] = sd[p + "ffn_norm.weight"]
        out[o + "mlp.gate_up.weight"] = torch.cat([sd[p + "mlp.gate_proj.weight"], sd[p + "mlp.up_proj.weight"]])
        out[o + "mlp.down.weight"] = sd[p + "mlp.down_proj.weight"]
        if config.pre_conv:
            out[o + "conv_norm.weight"] = sd[p + "conv.norm.weight"]
            out[o + "conv.weight"] = sd[p + "conv.conv.weight"].squeeze(1)
            out[o + "conv.bias"] = sd[p + "conv.conv.bias"]
        rows = [sd[s + f"{n}_proj.weight"] for n in _proj_names(config)]
        rows.append(sd[s + "learnable_ttt_lr_weight"].squeeze(1))
        out[t + "in_proj.weight"] = torch.cat(rows)
        out[t + "lr_bias"] = sd[s + "learnable_ttt_lr_bias"].squeeze(1)
        if config.share_qk:
            for n in ("conv_q", "conv_k"):
                out[t + f"{n}.weight"] = sd[s + f"{n}.weight"].squeeze(1)
                out[t + f"{n}.bias"] = sd[s + f"{n}.bias"]
        for n in _SAME:
            if n in ("W2",) and not mlp:
                continue
            out[t + n] = sd[s + n]
        out[t + "b1"] = sd[s + "b1"].squeeze(1)
        if mlp:
            out[t + "b2"] = sd[s + "b2"].squeeze(1)
    return out


def ours_to_published(sd: dict[str, torch.Tensor], config: TTTConfig, mlp: bool) -> dict[str, torch.Tensor]:
    """Our TTTLM state dict -> ttt.py names and shapes (lm_head.weight written only if untied)."""
    D, H = config.hidden_size, config.num_heads
    out = {"model.embed_tokens.weight": sd["embed.weight"], "model.norm.weight": sd["norm_f.weight"]}
    if not config.tie_word_embeddings:
        out["lm_head.weight"] = sd["lm_head_weight"]
    for i in range(config.num_layers):
        p, o = f"model.layers.{i}.", f"layers.{i}."
        s, t = p + "seq_modeling_block.", o + "ttt."
        out[p + "seq_norm.weight"] = sd[o + "seq_norm.weight"]
        out[p + "ffn_norm.weight"] = sd[o + "ffn_norm.weight"]
        gate, up = sd[o + "mlp.gate_up.weight"].chunk(2)
        out[p + "mlp.gate_proj.weight"], out[p + "mlp.up_proj.weight"] = gate, up
        out[p + "mlp.down_proj.weight"] = sd[o + "mlp.down.weight"]
        if config.pre_conv:
            out[p + "conv.norm.weight"] = sd[o + "conv_norm.weight"]
            out[p + "conv.conv.weight"] = sd[o + "conv.weight"].unsqueeze(1)
            out[p + "conv.conv.bias"] = sd[o + "conv.bias"]
        names = _proj_names(config)
        parts = sd[t + "in_proj.weight"].split([D] * len(names) + [H])
        for n, w in zip(names, parts):
            out[s + f"{n}_proj.weight"] = w
        out[s + "learnable_ttt_lr_weight"] = parts[-1].unsqueeze(1)
        out[s + "learnable_ttt_lr_bias"] = sd[t + "lr_bias"].unsqueeze(1)
        if config.share_qk:
            for n in ("conv_q", "conv_k"):
                out[s + f"{n}.weight"] = sd[t + f"{n}.weight"].unsqueeze(1)
                out[s + f"{n}.bias"] = sd[t + f"{n}.bias"]
        for n in _SAME:
            if n == "W2" and not mlp:
                continue
            out[s + n] = sd[t + n]
        out[s + "b1"] = sd[t + "b1"].unsqueeze(1)
        if mlp:
            out[s + "b2"] = sd[t + "b2"].unsqueeze(1)
    return {k: v.contiguous() for k, v in out.items()}
