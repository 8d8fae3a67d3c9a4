"""Checkpoint directories in the published Hugging Face layout: load them, and save TTT models in it.

The exchange format of the TTT models is the official PyTorch implementation's (test-time-training/
ttt-lm-pytorch, `ttt.py`, class TTTForCausalLM; DESIGN section 3):

    DIR/config.json        ttt.py's TTTConfig fields (vocab_size, hidden_size, num_hidden_layers, ...)
    DIR/model.safetensors  ttt.py's parameter names and shapes (models/ttt_convert.py lists them)
       or pytorch_model.bin, or either one sharded: model-00001-of-00003.safetensors, ... plus
       model.safetensors.index.json (pytorch_model.bin.index.json) mapping each tensor to its shard.

    model = from_pretrained(DIR, inner_net="mlp_2_dual", dtype="float16", device="cuda")
    save_pretrained(model, DIR)   # TTTForCausalLM.from_pretrained(DIR) runs it with the same logits

config.json decides the kind: a Mamba config goes to models/mamba_checkpoint.py. For TTT,
`ttt_layer_type` "linear"/"mlp" is M1/M2 and `inner_net` picks the implementation of that kind. Every
field, file and tensor is checked before the model is allocated, so a bad checkpoint raises one
UserError naming the field, file or tensor and never leaves a half-loaded model behind. `.bin` files
are read only through torch.load(weights_only=True). The vocabulary is the checkpoint's own (no
padding); save drops the rows our configs pad the vocabulary with.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import replace

import torch

from ttt_decode import registry
from ttt_decode.configs import ALIASES, CONFIGS, TTTConfig
from ttt_decode.errors import MissingPackageError, UserError
from ttt_decode.models.ttt_convert import (
    expected_published_keys,
    ours_to_published,
    published_to_ours,
)
from ttt_decode.models.weight_files import load_weight_file

CONFIG_FILE = "config.json"
SAFETENSORS_FILE, BIN_FILE = "model.safetensors", "pytorch_model.bin"
SAFETENSORS_INDEX, BIN_INDEX = SAFETENSORS_FILE + ".index.json", BIN_FILE + ".index.json"
# Where the weights are looked for, in the order transformers' from_pretrained looks.
WEIGHT_SOURCES = (SAFETENSORS_FILE, SAFETENSORS_INDEX, BIN_FILE, BIN_INDEX)
_SHARD = re.compile(r"^(model|pytorch_model)-\d{5}-of-\d{5}\.(safetensors|bin)$")

# ttt.py's TTTConfig defaults: transformers fills these in for a field config.json leaves out (its
# save_pretrained omits values equal to its base class defaults: 4.x leaves out tie_word_embeddings true).
PUBLISHED_DEFAULTS = {
    "vocab_size": 32000, "hidden_size": 2048, "intermediate_size": 5504, "num_hidden_layers": 24,
    "num_attention_heads": 32, "hidden_act": "silu", "rms_norm_eps": 1e-6, "pretraining_tp": 1,
    "tie_word_embeddings": True, "rope_theta": 10000.0, "use_gate": False, "share_qk": False,
    "ttt_layer_type": "linear", "ttt_base_lr": 1.0, "mini_batch_size": 16, "pre_conv": False, "conv_kernel": 4,
}
# published field -> our TTTConfig field, with the JSON type it must have.
_ARCH_FIELDS = {
    "vocab_size": ("vocab_size", int), "hidden_size": ("hidden_size", int),
    "intermediate_size": ("intermediate_size", int), "num_hidden_layers": ("num_layers", int),
    "num_attention_heads": ("num_heads", int), "mini_batch_size": ("mini_batch_size", int),
    "conv_kernel": ("conv_kernel", int), "rms_norm_eps": ("rms_norm_eps", float), "rope_theta": ("rope_theta", float),
    "ttt_base_lr": ("ttt_base_lr", float), "pre_conv": ("pre_conv", bool), "share_qk": ("share_qk", bool),
    "use_gate": ("use_gate", bool), "tie_word_embeddings": ("tie_word_embeddings", bool),
    "ttt_layer_type": ("ttt_layer_type", str),
}
# ttt.py fields that do not change a forward pass (initialisation, training, generation defaults):
# accepted, kept in model.checkpoint_config and written back by save_pretrained.
_PASSTHROUGH = ("max_position_embeddings", "initializer_range", "use_cache", "scan_checkpoint_group_size",
                "pad_token_id", "bos_token_id", "eos_token_id")
# Bookkeeping and generation keys of transformers' PretrainedConfig (4.x and 5.x): no effect on logits.
_HF_KEYS = frozenset("""
    architectures model_type transformers_version dtype torch_dtype _name_or_path _commit_hash auto_map
    return_dict output_hidden_states output_attentions torchscript use_bfloat16 tf_legacy_loss pruned_heads
    chunk_size_feed_forward is_encoder_decoder is_decoder cross_attention_hidden_size add_cross_attention
    tie_encoder_decoder finetuning_task id2label label2id tokenizer_class prefix sep_token_id
    decoder_start_token_id task_specific_params problem_type max_length min_length do_sample early_stopping
    num_beams num_beam_groups diversity_penalty temperature top_k top_p typical_p repetition_penalty
    length_penalty no_repeat_ngram_size encoder_no_repeat_ngram_size bad_words_ids num_return_sequences
    output_scores return_dict_in_generate forced_bos_token_id forced_eos_token_id remove_invalid_values
    exponential_decay_length_penalty suppress_tokens begin_suppress_tokens
    """.split())


# ---- config.json ----
def read_config(path: str) -> dict:
    """The parsed config.json of checkpoint directory path (UserError naming the file if unusable)."""
    cfg_path = os.path.join(path, CONFIG_FILE)
    if not os.path.isfile(cfg_path):
        raise UserError(f"no {CONFIG_FILE} in {path}; a checkpoint directory holds config.json and its weights "
                        f"({SAFETENSORS_FILE} or {BIN_FILE})")
    try:
        with open(cfg_path) as fh:
            raw = json.load(fh)
    except json.JSONDecodeError as e:
        raise UserError(f"{cfg_path} is not valid JSON ({e.msg} at line {e.lineno}); fix or replace the file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read {cfg_path} ({_reason(e)}); check the file and its permissions") from None
    if not isinstance(raw, dict):
        raise UserError(f"{cfg_path} must hold a JSON object of config fields")
    return raw


def config_from_published(raw: dict, name: str, where: str = CONFIG_FILE) -> TTTConfig:
    """Our TTTConfig (vocabulary not padded) from ttt.py's config fields; refuses what we do not implement."""
    if raw.get("model_type", "ttt") != "ttt":
        raise UserError(f"{where}: model_type {raw['model_type']!r} is not supported; checkpoints load for "
                        "TTT (ttt.py, model_type 'ttt') and Mamba-1")
    for key in raw:
        if key in PUBLISHED_DEFAULTS or key in _PASSTHROUGH or key in _HF_KEYS:
            continue
        if key == "rope_scaling":
            if raw[key] is None:
                continue
            raise UserError(f"{where}: rope_scaling {raw[key]!r} is not supported: ttt.py ignores it (rotary "
                            "positions are t mod mini_batch_size); remove the field")
        raise UserError(f"{where}: unsupported field {key!r}: it is not a field of ttt.py's TTTConfig; remove it")
    fields = {**PUBLISHED_DEFAULTS, **{k: raw[k] for k in raw if k in PUBLISHED_DEFAULTS}}
    ours = {}
    for key, (field, kind) in _ARCH_FIELDS.items():
        ours[field] = _typed(fields[key], kind, key, where)
    if fields["hidden_act"] not in ("silu", "swish"):
        raise UserError(f"{where}: hidden_act {fields['hidden_act']!r} is not supported: the SwiGLU MLP here uses "
                        "silu; only checkpoints trained with hidden_act 'silu' load")
    if fields["pretraining_tp"] != 1:
        raise UserError(f"{where}: pretraining_tp {fields['pretraining_tp']!r} is not supported; set it to 1 "
                        "(it only splits the projections into slices, the weights are the same)")
    for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "mini_batch_size", "conv_kernel"):
        if fields[key] < 1:
            raise UserError(f"{where}: {key} must be >= 1, got {fields[key]}")
    for key in ("rms_norm_eps", "rope_theta", "ttt_base_lr"):
        if not fields[key] > 0:
            raise UserError(f"{where}: {key} must be > 0, got {fields[key]}")
    if ours["ttt_layer_type"] not in ("linear", "mlp"):
        raise UserError(f"{where}: ttt_layer_type {ours['ttt_layer_type']!r} is not supported; ttt.py knows "
                        "'linear' (TTT-Linear, M1) and 'mlp' (TTT-MLP, M2)")
    D, H = fields["hidden_size"], fields["num_attention_heads"]
    if D % H or (D // H) % 2:
        raise UserError(f"{where}: hidden_size {D} must split into num_attention_heads {H} heads of even size "
                        "(the rotary embedding rotates pairs)")
    try:
        return TTTConfig(name, pad_vocab_multiple=1, **ours)
    except UserError as e:
        raise UserError(f"{where}: {e}") from None


_KIND_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def _typed(value, kind, key: str, where: str):
    ok = {int: isinstance(value, int) and not isinstance(value, bool),
          float: isinstance(value, (int, float)) and not isinstance(value, bool),
          bool: isinstance(value, bool), str: isinstance(value, str)}[kind]
    if not ok:
        raise UserError(f"{where}: {key} must be {_KIND_NAMES[kind]}, got {value!r}")
    return float(value) if kind is float else value


def published_config(model) -> dict:
    """config.json for model in ttt.py's field names (fields it read from a checkpoint are kept)."""
    c = model.config
    kept = getattr(model, "checkpoint_config", None) or {}
    out = {"architectures": ["TTTForCausalLM"], "model_type": "ttt"}
    out.update({k: kept[k] for k in _PASSTHROUGH if k in kept})
    out.update({
        "vocab_size": c.vocab_size, "hidden_size": c.hidden_size, "intermediate_size": c.intermediate_size,
        "num_hidden_layers": c.num_layers, "num_attention_heads": c.num_heads, "hidden_act": "silu",
        "rms_norm_eps": c.rms_norm_eps, "pretraining_tp": 1, "tie_word_embeddings": c.tie_word_embeddings,
        "rope_theta": c.rope_theta, "use_gate": c.use_gate, "share_qk": c.share_qk, "ttt_layer_type": model.kind,
        "ttt_base_lr": c.ttt_base_lr, "mini_batch_size": c.mini_batch_size, "pre_conv": c.pre_conv,
        "conv_kernel": c.conv_kernel, "dtype": str(model.dtype).removeprefix("torch."),
    })
    return out


# ---- weight files ----
def _reason(e: BaseException) -> str:
    return getattr(e, "strerror", None) or type(e).__name__


def read_tensors(path: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """All tensors of checkpoint directory path, and the file each came from (single or sharded)."""
    for source in WEIGHT_SOURCES:
        fp = os.path.join(path, source)
        if not os.path.isfile(fp):
            continue
        if not source.endswith(".index.json"):
            tensors = load_weight_file(fp)
            return tensors, dict.fromkeys(tensors, fp)
        return _read_sharded(path, fp)
    raise UserError(f"no weights in {path}: expected {SAFETENSORS_FILE} or {BIN_FILE} (or a sharded checkpoint "
                    f"with {SAFETENSORS_INDEX} / {BIN_INDEX})")


def _read_sharded(path: str, index_path: str):
    try:
        with open(index_path) as fh:
            weight_map = json.load(fh).get("weight_map")
    except (json.JSONDecodeError, AttributeError):
        raise UserError(f"{index_path} is not a JSON object with a weight_map; re-save the checkpoint") from None
    except OSError as e:
        raise UserError(f"cannot read {index_path} ({_reason(e)})") from None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise UserError(f"{index_path}: weight_map must map tensor names to shard file names")
    tensors, sources = {}, {}
    for shard in sorted(set(weight_map.values())):
        fp = os.path.join(path, shard)
        if os.path.basename(shard) != shard or not os.path.isfile(fp):
            raise UserError(f"shard {shard!r} listed in {index_path} is not a file in {path}")
        for name, t in load_weight_file(fp).items():
            if weight_map.get(name) != shard:
                raise UserError(f"{fp}: tensor {name!r} is not listed for this shard in "
                                f"{os.path.basename(index_path)}; the index does not match the shards")
            tensors[name], sources[name] = t, fp
    absent = [n for n in weight_map if n not in tensors]
    if absent:
        raise UserError(f"tensor {absent[0]!r} is listed in {os.path.basename(index_path)} but missing from its "
                        f"shard {weight_map[absent[0]]}")
    return tensors, sources


def _check_tensors(tensors, sources, cfg: TTTConfig, mlp: bool, path: str, cfg_path: str) -> dict[str, torch.Tensor]:
    """Names, shapes and dtypes against the config; returns the published state dict to convert."""
    expected = expected_published_keys(cfg, mlp)
    tensors = dict(tensors)
    if cfg.tie_word_embeddings and "lm_head.weight" in tensors:
        head, embed = tensors.pop("lm_head.weight"), tensors.get("model.embed_tokens.weight")
        if embed is None:
            # The tied head saved instead of the embedding: the same matrix.
            tensors["model.embed_tokens.weight"], sources["model.embed_tokens.weight"] = head, sources["lm_head.weight"]
        elif head.shape != embed.shape or not torch.equal(head, embed.to(head.dtype)):
            raise UserError(f"{sources['lm_head.weight']}: lm_head.weight differs from model.embed_tokens.weight but "
                            f"{cfg_path} says tie_word_embeddings true; set it to false to use a separate head")
    unexpected = [n for n in tensors if n not in expected]
    missing = [n for n in expected if n not in tensors]
    if unexpected:
        also = f"; and {missing[0]!r} is missing (renamed?)" if missing else ""
        raise UserError(f"{sources[unexpected[0]]}: unexpected tensor {unexpected[0]!r}: "
                        f"{_why_unexpected(unexpected[0], cfg, mlp, cfg_path)}{also}")
    for name, shape in expected.items():
        if name not in tensors:
            continue
        t = tensors[name]
        if tuple(t.shape) != shape:
            raise UserError(f"{sources[name]}: tensor {name!r} has shape {tuple(t.shape)}, expected {shape} from "
                            f"{cfg_path}")
        if not t.is_floating_point():
            raise UserError(f"{sources[name]}: tensor {name!r} has dtype {t.dtype}; expected a floating-point tensor")
    if missing:
        raise UserError(f"missing tensor {missing[0]!r} in {path} ({len(missing)} of {len(expected)} missing): "
                        f"{_why_missing(missing[0], cfg, mlp, cfg_path)}")
    return tensors


def _flag_hint(name: str, cfg: TTTConfig, mlp: bool, cfg_path: str) -> str | None:
    """The one config value under which name would be a tensor of this model, if any."""
    for flag in ("pre_conv", "share_qk", "use_gate", "tie_word_embeddings"):
        value = getattr(cfg, flag)
        if name in expected_published_keys(replace(cfg, **{flag: not value}), mlp):
            return f"{cfg_path} says {flag} {str(value).lower()}; the tensor belongs to a model with {flag} " \
                   f"{str(not value).lower()}"
    if name in expected_published_keys(cfg, not mlp):
        return f"{cfg_path} says ttt_layer_type {cfg.ttt_layer_type!r}; the tensor belongs to a TTT-" \
               f"{'MLP' if not mlp else 'Linear'} model"
    return None


def _why_unexpected(name, cfg, mlp, cfg_path):
    hint = _flag_hint(name, cfg, mlp, cfg_path)
    if hint:
        return hint
    layer = re.match(r"model\.layers\.(\d+)\.", name)
    if layer and int(layer.group(1)) >= cfg.num_layers:
        return f"{cfg_path} says num_hidden_layers {cfg.num_layers}"
    return f"ttt.py's TTTForCausalLM has no such parameter (check the tensor names against {cfg_path})"


def _why_missing(name, cfg, mlp, cfg_path):
    for flag in ("pre_conv", "share_qk", "use_gate", "tie_word_embeddings"):
        value = getattr(cfg, flag)
        if name not in expected_published_keys(replace(cfg, **{flag: not value}), mlp):
            return f"{cfg_path} says {flag} {str(value).lower()}, which needs it"
    return "every parameter of ttt.py's TTTForCausalLM must be present"


# ---- public API ----
def looks_like_path(spec: str) -> bool:
    return "/" in spec or os.sep in spec or spec.startswith(".")


def check_model_path(spec: str) -> None:
    """A --model-name that looks like a path but names no directory: say so instead of 'unknown model'."""
    if spec in CONFIGS or spec in ALIASES or not looks_like_path(spec):
        return
    if os.path.isfile(spec):
        raise UserError(f"{spec} is a file; pass the checkpoint directory that holds config.json and the weights")
    if not os.path.isdir(spec):
        raise UserError(f"checkpoint directory {spec} not found; pass an existing directory or a model name "
                        "(see --help)")


def from_pretrained(path, inner_net: str | None = None, dtype="float16", device=None):
    """A model from a checkpoint directory in the published layout; config.json decides the kind.

    dtype=None keeps a TTT checkpoint's own dtype (that of its embedding); a Mamba one then loads in float32."""
    from ttt_decode.dtypes import parse_dtype, resolve_device
    from ttt_decode.models.ttt import TTTLM

    path = os.path.abspath(os.fspath(path))
    if not os.path.isdir(path):
        if os.path.isfile(path):
            raise UserError(f"{path} is a file; pass the checkpoint directory that holds config.json and the weights")
        raise UserError(f"checkpoint directory {path} not found")
    raw = read_config(path)
    cfg_path = os.path.join(path, CONFIG_FILE)
    if is_mamba_checkpoint(raw):
        from ttt_decode.models.mamba_checkpoint import load_mamba_checkpoint

        model = load_mamba_checkpoint(path, dtype=dtype or "float32", device=device, inner_net=inner_net)
        model.checkpoint_config = raw
        return model
    cfg = config_from_published(raw, name=os.path.basename(path), where=cfg_path)
    mlp = cfg.ttt_layer_type == "mlp"
    default_net = "mlp_2_dual" if mlp else "mlp_1_dual"
    if inner_net is not None and registry.get(inner_net, "ttt").ttt_layer_type != cfg.ttt_layer_type:
        raise UserError(f"inner net {inner_net!r} is for TTT-{'Linear' if mlp else 'MLP'} but {cfg_path} has "
                        f"ttt_layer_type {cfg.ttt_layer_type!r}; pick {default_net} or another "
                        f"{default_net[:6]}* implementation")
    device = resolve_device(device)
    tensors, sources = read_tensors(path)
    published = _check_tensors(tensors, sources, cfg, mlp, path, cfg_path)
    dtype = parse_dtype(dtype) if dtype is not None else published["model.embed_tokens.weight"].dtype
    ours = published_to_ours(published, cfg, mlp)
    # Everything is checked: only now is the model allocated (built on the meta device, no random init).
    model = TTTLM(cfg, inner_net or default_net, dtype=dtype, device="meta").to_empty(device=device)
    model.load_state_dict(ours, strict=True)
    model.eval()
    model.weights_source = f"checkpoint:{path}"
    model.checkpoint_config = raw
    return model


def is_mamba_checkpoint(raw: dict) -> bool:
    """True when a config.json dict describes a Mamba model (models/mamba_checkpoint.py loads it)."""
    from ttt_decode.models.mamba_checkpoint import is_mamba_config

    return is_mamba_config(raw)


def parse_size(text) -> int:
    """'500MB' / '2GB' (powers of 1000), '512MiB' (powers of 1024) or a byte count -> bytes."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]i?B)?\s*", str(text), flags=re.IGNORECASE)
    if not m:
        raise UserError(f"shard size {text!r} not understood; write e.g. 500MB, 2GB or a number of bytes")
    unit = (m.group(2) or "B").upper()
    scale = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}[unit]
    size = int(float(m.group(1)) * scale)
    if size < 1:
        raise UserError(f"shard size {text!r} must be at least one byte")
    return size


def _checkpoint_files(path: str) -> list[str]:
    names = set(WEIGHT_SOURCES) | {CONFIG_FILE}
    return sorted(n for n in os.listdir(path) if n in names or _SHARD.match(n))


def save_pretrained(model, path, *, safe_serialization: bool = True, max_shard_size=None,
                    overwrite: bool = False) -> str:
    """Write a TTT model to directory path in ttt.py's layout; returns the absolute path.

    The tied LM head is not written (transformers ties it again on load); rows that pad the vocabulary
    are dropped. max_shard_size (bytes or '2GB') splits the weights into shards with an index file.
    A directory that already holds a checkpoint is refused unless overwrite=True, which removes its
    config.json and weight files (other files stay).
    """
    from ttt_decode.models.ttt import TTTLM

    if not isinstance(model, TTTLM):
        raise UserError(f"save_pretrained writes TTT models (ttt.py's layout); got {type(model).__name__} "
                        "(Mamba: models.mamba_checkpoint.save_mamba_checkpoint)")
    limit = parse_size(max_shard_size) if max_shard_size is not None else None
    if safe_serialization:
        try:
            from safetensors.torch import save_file
        except ImportError:
            raise MissingPackageError("safetensors", "saving model.safetensors (or pass safe_serialization=False)") \
                from None
    path = os.path.abspath(os.fspath(path))
    if os.path.exists(path) and not os.path.isdir(path):
        raise UserError(f"{path} exists and is not a directory; choose another output directory")
    os.makedirs(path, exist_ok=True)
    old = _checkpoint_files(path)
    if old and not overwrite:
        shown = ", ".join(old[:3]) + (f" and {len(old) - 3} more" if len(old) > 3 else "")
        raise UserError(f"{path} already holds a checkpoint ({shown}); choose another directory or overwrite it "
                        "(--overwrite)")
    cfg, V = model.config, model.config.vocab_size
    tensors = ours_to_published(model.state_dict(), cfg, model.kind == "mlp")
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        if name in tensors:
            tensors[name] = tensors[name][:V]  # [V, D]: the padding rows are not tokens
    tensors = {k: _compact(v.detach().to("cpu")) for k, v in tensors.items()}
    for name in old:
        os.remove(os.path.join(path, name))
    with open(os.path.join(path, CONFIG_FILE), "w") as fh:
        json.dump(published_config(model), fh, indent=2)
        fh.write("\n")
    shards = _split(tensors, limit)
    single, ext = (SAFETENSORS_FILE, "safetensors") if safe_serialization else (BIN_FILE, "bin")
    stem = single.split(".")[0]
    names = [single] if len(shards) == 1 else [f"{stem}-{i + 1:05d}-of-{len(shards):05d}.{ext}"
                                               for i in range(len(shards))]
    for fname, shard in zip(names, shards):
        fp = os.path.join(path, fname)
        if safe_serialization:
            save_file(shard, fp, metadata={"format": "pt"})
        else:
            torch.save(shard, fp)
    if len(shards) > 1:
        index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in tensors.values())},
                 "weight_map": {n: f for f, shard in zip(names, shards) for n in shard}}
        with open(os.path.join(path, single + ".index.json"), "w") as fh:
            json.dump(index, fh, indent=2)
            fh.write("\n")
    return path


def _compact(t: torch.Tensor) -> torch.Tensor:
    """t owning exactly its bytes: torch.save writes a view's whole storage (a split of the fused projection
    would carry the other blocks with it, into every shard)."""
    if t.is_contiguous() and t.untyped_storage().nbytes() == t.numel() * t.element_size():
        return t
    return t.clone(memory_format=torch.contiguous_format)


def _split(tensors: dict[str, torch.Tensor], limit: int | None) -> list[dict[str, torch.Tensor]]:
    """Tensors in order, cut into shards of at most limit bytes (a larger tensor gets a shard of its own)."""
    shards, size = [{}], 0
    for name, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        if limit is not None and shards[-1] and size + nbytes > limit:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += nbytes
    return shards
