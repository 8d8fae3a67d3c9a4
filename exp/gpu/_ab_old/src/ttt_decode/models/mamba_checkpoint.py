"""Mamba-1 checkpoints in the published Hugging Face layouts, read and written from a local directory.

Two layouts load (nothing is downloaded):
- state-spaces/mamba-* (mamba-ssm's `save_pretrained`): config.json with d_model, n_layer, vocab_size,
  ssm_cfg, pad_vocab_size_multiple, ...; tensors backbone.embedding.weight,
  backbone.layers.N.mixer.{in_proj,conv1d,x_proj,dt_proj,out_proj}.*, .A_log, .D,
  backbone.layers.N.norm.weight, backbone.norm_f.weight, lm_head.weight (tied: may be absent).
- transformers' MambaForCausalLM (config.json with model_type "mamba"): the same tensor names except
  backbone.embeddings.weight; the vocabulary in config.json is the embedding's row count.
Weights: model.safetensors or pytorch_model.bin, or their sharded form with an *.index.json.
`.bin` files are read with torch.load(weights_only=True) only.

Every tensor is checked (name, shape, floating dtype) against the model the config describes before
anything is materialised: a missing, unexpected or misshaped tensor raises one UserError naming it,
and no half-loaded model is ever returned. `save_mamba_checkpoint` writes the state-spaces layout (or
the transformers one) from a MambaLM.
"""

from __future__ import annotations

import json
import os
import re

import torch

from ttt_decode.configs import MambaConfig
from ttt_decode.errors import MissingPackageError, UserError
from ttt_decode.models.weight_files import load_weight_file

CONFIG_FILE = "config.json"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
# ssm_cfg keys that only affect training-time initialisation or kernels choice: accepted, ignored.
_SSM_INIT_KEYS = {"dt_min", "dt_max", "dt_init", "dt_scale", "dt_init_floor", "use_fast_path"}
_MIXER_PARAMS = ("in_proj.weight", "in_proj.bias", "conv1d.weight", "conv1d.bias", "x_proj.weight", "dt_proj.weight",
                 "dt_proj.bias", "A_log", "D", "out_proj.weight", "out_proj.bias")


def is_mamba_config(cfg: dict) -> bool:
    """True for a Mamba-1 config.json of either layout (transformers' model_type 'mamba', or state-spaces')."""
    if not isinstance(cfg, dict):
        return False
    if cfg.get("model_type") == "mamba":
        return True
    return "model_type" not in cfg and all(k in cfg for k in ("d_model", "n_layer", "vocab_size"))


def _layout(cfg: dict) -> str:
    return "hf" if cfg.get("model_type") == "mamba" else "state-spaces"


def _get(cfg: dict, key: str, kind, where: str, default=None):
    v = cfg.get(key, default)
    if v is None:
        raise UserError(f"{where}: missing key {key!r}; the file is not a Mamba config.json")
    if kind is int and (not isinstance(v, int) or isinstance(v, bool)):
        raise UserError(f"{where}: {key} must be an integer, got {v!r}")
    if kind is bool and not isinstance(v, bool):
        raise UserError(f"{where}: {key} must be true or false, got {v!r}")
    if kind is float and not isinstance(v, (int, float)):
        raise UserError(f"{where}: {key} must be a number, got {v!r}")
    return v


def _rank(v, where: str, key: str):
    if v == "auto":
        return None
    if not isinstance(v, int) or isinstance(v, bool):
        raise UserError(f"{where}: {key} must be 'auto' or an integer, got {v!r}")
    return v


def config_from_dict(cfg: dict, name: str, where: str = CONFIG_FILE) -> MambaConfig:
    """MambaConfig from a config.json of either layout (unsupported variants raise UserError)."""
    if _layout(cfg) == "hf":
        if cfg.get("hidden_act", "silu") != "silu":
            raise UserError(f"{where}: hidden_act {cfg['hidden_act']!r} is not supported (Mamba-1 uses silu)")
        d_model, expand = _get(cfg, "hidden_size", int, where), _get(cfg, "expand", int, where, 2)
        inter = cfg.get("intermediate_size")
        if inter is not None and inter != expand * d_model:
            raise UserError(f"{where}: intermediate_size {inter} != expand * hidden_size ({expand * d_model})")
        return MambaConfig(
            name=name, d_model=d_model, n_layer=_get(cfg, "num_hidden_layers", int, where),
            vocab_size=_get(cfg, "vocab_size", int, where), pad_vocab_multiple=1,
            d_state=_get(cfg, "state_size", int, where, 16), expand=expand,
            d_conv=_get(cfg, "conv_kernel", int, where, 4),
            dt_rank=_rank(cfg.get("time_step_rank", "auto"), where, "time_step_rank"),
            rms_norm_eps=float(_get(cfg, "layer_norm_epsilon", float, where, 1e-5)),
            conv_bias=_get(cfg, "use_conv_bias", bool, where, True), proj_bias=_get(cfg, "use_bias", bool, where,
                                                                                    False),
            tie_word_embeddings=_get(cfg, "tie_word_embeddings", bool, where, True))
    ssm = cfg.get("ssm_cfg") or {}
    if not isinstance(ssm, dict):
        raise UserError(f"{where}: ssm_cfg must be an object, got {ssm!r}")
    if ssm.get("layer", "Mamba1") != "Mamba1":
        raise UserError(f"{where}: ssm_cfg.layer {ssm['layer']!r} is not supported; only Mamba-1 checkpoints load")
    unknown = sorted(set(ssm) - {"layer", "d_state", "d_conv", "expand", "dt_rank", "conv_bias",
                                 "bias"} - _SSM_INIT_KEYS)
    if unknown:
        raise UserError(f"{where}: unsupported ssm_cfg key(s) {', '.join(unknown)}")
    if cfg.get("d_intermediate", 0) or cfg.get("attn_layer_idx"):
        raise UserError(f"{where}: hybrid models (d_intermediate / attn_layer_idx) are not supported; only pure "
                        "Mamba-1")
    if not cfg.get("rms_norm", True):
        raise UserError(f"{where}: rms_norm false (LayerNorm blocks) is not supported; Mamba-1 here uses RMSNorm")
    return MambaConfig(
        name=name, d_model=_get(cfg, "d_model", int, where), n_layer=_get(cfg, "n_layer", int, where),
        vocab_size=_get(cfg, "vocab_size", int, where),
        pad_vocab_multiple=_get(cfg, "pad_vocab_size_multiple", int, where, 8),
        d_state=_get(ssm, "d_state", int, where, 16), expand=_get(ssm, "expand", int, where, 2),
        d_conv=_get(ssm, "d_conv", int, where, 4), dt_rank=_rank(ssm.get("dt_rank", "auto"), where, "ssm_cfg.dt_rank"),
        rms_norm_eps=float(_get(cfg, "norm_epsilon", float, where, 1e-5)),
        conv_bias=_get(ssm, "conv_bias", bool, where, True), proj_bias=_get(ssm, "bias", bool, where, False),
        tie_word_embeddings=_get(cfg, "tie_embeddings", bool, where, True))


def state_spaces_config(cfg: MambaConfig) -> dict:
    """config.json of the state-spaces layout: mamba-ssm's MambaConfig fields only, so mamba-ssm reads it too
    (it has no norm epsilon field: its blocks use 1e-5, as every Mamba config here does)."""
    return {"d_model": cfg.d_model, "d_intermediate": 0, "n_layer": cfg.n_layer, "vocab_size": cfg.vocab_size,
            "ssm_cfg": {"layer": "Mamba1", "d_state": cfg.d_state, "d_conv": cfg.d_conv, "expand": cfg.expand,
                        "dt_rank": cfg.dt_rank, "conv_bias": cfg.conv_bias, "bias": cfg.proj_bias},
            "attn_layer_idx": [], "attn_cfg": {}, "rms_norm": True, "residual_in_fp32": True, "fused_add_norm": True,
            "pad_vocab_size_multiple": cfg.pad_vocab_multiple, "tie_embeddings": cfg.tie_word_embeddings}


def hf_config(cfg: MambaConfig) -> dict:
    """config.json of transformers' MambaForCausalLM (its vocab_size is the padded embedding size)."""
    return {"model_type": "mamba", "architectures": ["MambaForCausalLM"], "hidden_size": cfg.d_model,
            "num_hidden_layers": cfg.n_layer, "vocab_size": cfg.padded_vocab_size, "state_size": cfg.d_state,
            "expand": cfg.expand, "intermediate_size": cfg.d_inner, "conv_kernel": cfg.d_conv,
            "time_step_rank": cfg.dt_rank, "use_bias": cfg.proj_bias, "use_conv_bias": cfg.conv_bias,
            "layer_norm_epsilon": cfg.rms_norm_eps, "residual_in_fp32": True, "hidden_act": "silu",
            "tie_word_embeddings": cfg.tie_word_embeddings}


# ---- tensor names ----
def _ours_to_published(name: str, layout: str) -> str:
    if name == "embed.weight":
        return "backbone.embeddings.weight" if layout == "hf" else "backbone.embedding.weight"
    if name == "lm_head_weight":
        return "lm_head.weight"
    return "backbone." + name  # layers.N.norm.weight, layers.N.mixer.*, norm_f.weight


_MIXER_NAMES = "|".join(re.escape(p) for p in _MIXER_PARAMS)
_PUBLISHED = re.compile(r"^backbone\.(layers\.\d+\.(norm\.weight|mixer\.(" + _MIXER_NAMES
                        + r"))|norm_f\.weight)$")


def _published_to_ours(name: str) -> str | None:
    if name in ("backbone.embedding.weight", "backbone.embeddings.weight"):
        return "embed.weight"
    if name == "lm_head.weight":
        return "lm_head_weight"
    return name[len("backbone."):] if _PUBLISHED.match(name) else None


def published_state_dict(model, layout: str = "state-spaces") -> dict[str, torch.Tensor]:
    """The model's tensors under published names (conv weight as [D, 1, W]; lm_head.weight always present)."""
    out = {}
    for name, t in model.state_dict().items():
        t = t.detach()
        if name.endswith("conv1d.weight"):
            t = t.unsqueeze(1)  # [D, 1, W]
        out[_ours_to_published(name, layout)] = t
    if "lm_head.weight" not in out:
        out["lm_head.weight"] = out[_ours_to_published("embed.weight", layout)]
    return out


# ---- reading ----
def _read_json(path: str) -> dict:
    try:
        with open(path) as fh:
            data = json.load(fh)
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON ({e.msg} at line {e.lineno}); fix or replace the file") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} must hold a JSON object")
    return data


def read_tensors(path: str) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint directory (single file or sharded with an index)."""
    for index in INDEX_FILES:
        ip = os.path.join(path, index)
        if os.path.isfile(ip):
            weight_map = _read_json(ip).get("weight_map")
            if not isinstance(weight_map, dict):
                raise UserError(f"{ip} has no weight_map object; the index file is damaged")
            tensors: dict[str, torch.Tensor] = {}
            for shard in sorted(set(weight_map.values())):
                sp = os.path.join(path, shard)
                if not os.path.isfile(sp):
                    raise UserError(f"shard {shard} listed in {index} is missing from {path}")
                tensors.update(load_weight_file(sp))
            missing = sorted(set(weight_map) - set(tensors))
            if missing:
                raise UserError(f"tensor {missing[0]} is listed in {index} but not found in its shard")
            return tensors
    for fname in WEIGHT_FILES:
        fp = os.path.join(path, fname)
        if os.path.isfile(fp):
            return load_weight_file(fp)
    raise UserError(f"no weights in {path}: expected {' or '.join(WEIGHT_FILES)} (or a sharded *.index.json)")


def _convert(tensors: dict[str, torch.Tensor], expected: dict[str, torch.Size], layout: str) -> dict[str, torch.Tensor]:
    """Published names -> our names, every tensor checked; raises UserError naming the first bad one."""
    ours: dict[str, torch.Tensor] = {}
    source: dict[str, str] = {}
    for name in sorted(tensors):
        t = tensors[name]
        key = _published_to_ours(name)
        if key == "lm_head_weight" and key not in expected:
            continue  # tied head: compared with the embedding below
        if key is None or key not in expected:
            raise UserError(f"unexpected tensor {name!r} in the checkpoint: the config.json describes no such "
                            "parameter (check the tensor names, n_layer and the bias flags)")
        if key in ours:
            raise UserError(f"tensor {name!r} duplicates {source[key]!r}; keep only one of them")
        if not t.is_floating_point():
            raise UserError(f"tensor {name!r} has dtype {t.dtype}; expected a floating-point tensor")
        want = tuple(expected[key])
        if key.endswith("conv1d.weight"):
            if t.dim() != 3 or t.shape[1] != 1 or (t.shape[0], t.shape[2]) != want:
                raise UserError(f"tensor {name!r} has shape {tuple(t.shape)}, expected {(want[0], 1, want[1])}")
            t = t.squeeze(1)
        elif tuple(t.shape) != want:
            raise UserError(f"tensor {name!r} has shape {tuple(t.shape)}, expected {want}")
        ours[key], source[key] = t, name
    missing = [k for k in expected if k not in ours]
    if missing:
        raise UserError(f"missing tensor {_ours_to_published(missing[0], layout)!r} in the checkpoint "
                        f"({len(missing)} missing in all)")
    head = tensors.get("lm_head.weight")
    if "lm_head_weight" not in expected and head is not None and not torch.equal(head,
                                                                                 ours["embed.weight"].to(head.dtype)):
        raise UserError("lm_head.weight differs from the embedding but config.json says the embeddings are tied; "
                        "set tie_embeddings / tie_word_embeddings to false")
    return ours


def load_mamba_checkpoint(path, dtype="float16", device=None, inner_net=None):
    """A MambaLM from a local checkpoint directory (either published layout); nothing is downloaded."""
    from ttt_decode.dtypes import parse_dtype, resolve_device
    from ttt_decode.models.mamba import MambaLM, check_inner_net, default_inner_net

    path = os.path.abspath(os.fspath(path))
    if not os.path.isdir(path):
        raise UserError(f"checkpoint directory {path} does not exist")
    cfg_path = os.path.join(path, CONFIG_FILE)
    if not os.path.isfile(cfg_path):
        raise UserError(f"no {CONFIG_FILE} in {path}; a checkpoint directory needs config.json and its weights")
    raw = _read_json(cfg_path)
    if not is_mamba_config(raw):
        raise UserError(f"{cfg_path} does not describe a Mamba-1 model (no model_type 'mamba', no d_model/n_layer)")
    cfg = config_from_dict(raw, name=os.path.basename(path.rstrip(os.sep)) or path, where=cfg_path)
    dtype, device = parse_dtype(dtype), resolve_device(device)
    inner_net = check_inner_net(inner_net or default_inner_net(device))
    tensors = read_tensors(path)
    skeleton = MambaLM(cfg, dtype=dtype, device="meta", inner_net=inner_net)
    expected = {k: v.shape for k, v in skeleton.state_dict().items()}
    ours = _convert(tensors, expected, _layout(raw))
    model = skeleton.to_empty(device=device)
    model.load_state_dict({k: v.to(dtype) for k, v in ours.items()}, strict=True)
    model.eval()
    model.weights_source = f"checkpoint:{path}"
    return model


def save_mamba_checkpoint(model, path, layout: str = "state-spaces", safetensors: bool = False) -> str:
    """Write model (a MambaLM) to directory path in the state-spaces layout (or layout='hf'); returns path.

    The .bin holds lm_head.weight sharing storage with the embedding (as mamba-ssm saves it); a
    .safetensors file leaves the tied head out (safetensors stores no shared tensors)."""
    if layout not in ("state-spaces", "hf"):
        raise UserError(f"unknown checkpoint layout {layout!r}; choose 'state-spaces' or 'hf'")
    os.makedirs(path, exist_ok=True)
    cfg = model.config
    tensors = {k: v.contiguous().cpu() for k, v in published_state_dict(model, layout).items()}
    if cfg.tie_word_embeddings:
        emb = "backbone.embeddings.weight" if layout == "hf" else "backbone.embedding.weight"
        tensors["lm_head.weight"] = tensors[emb]
    with open(os.path.join(path, CONFIG_FILE), "w") as fh:
        json.dump(hf_config(cfg) if layout == "hf" else state_spaces_config(cfg), fh, indent=2)
    if safetensors:
        try:
            from safetensors.torch import save_file
        except ImportError:
            raise MissingPackageError("safetensors", "saving model.safetensors") from None
        if cfg.tie_word_embeddings:
            tensors.pop("lm_head.weight")
        save_file(tensors, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    else:
        torch.save(tensors, os.path.join(path, "pytorch_model.bin"))
    return os.path.abspath(path)
