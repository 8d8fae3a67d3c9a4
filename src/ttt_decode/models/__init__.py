"""Model construction: `build(name, inner_net=..., dtype=..., device=...)` for every model family.

    model = build("ttt-1b", inner_net="mlp_2_dual", dtype=torch.float16, device="cuda")
"""

from __future__ import annotations

import torch

from ttt_decode.configs import MambaConfig, TransformerConfig, TTTConfig, get_config
from ttt_decode.errors import UserError
from ttt_decode.models.common import DecodeLM

DTYPES = {"float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
          "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
          "float64": torch.float64, "fp64": torch.float64, "double": torch.float64}


def parse_dtype(name) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    if name not in DTYPES:
        raise UserError(f"unknown dtype {name!r}; choose one of float16, bfloat16, float32, float64")
    return DTYPES[name]


# What --device accepts. "meta" (shapes only, no data) is for memory estimates inside the toolkit.
DEVICE_HELP = "cpu, cuda or cuda:N"


def parse_device(text: str, allow_meta: bool = False) -> torch.device:
    """'cpu', 'cuda', 'cuda:N' -> torch.device; anything else (tpu, mps, xla, CPU, meta, ...) is a UserError."""
    types = ("cpu", "cuda", "meta") if allow_meta else ("cpu", "cuda")
    try:
        device = torch.device(text)
    except (RuntimeError, TypeError, ValueError):
        device = None
    # torch.device accepts "cpu:0" and "cuda:0"; the exact spelling keeps "CPU" from passing as cpu.
    if device is None or device.type not in types or str(text).split(":")[0] != device.type:
        raise UserError(f"unknown or unsupported device {text!r}; ttt-decode runs on {DEVICE_HELP} "
                        "(e.g. --device cpu)")
    return device


def resolve_device(device) -> torch.device:
    if device is None:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    elif not isinstance(device, torch.device):
        device = parse_device(str(device), allow_meta=True)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("device 'cuda' was asked for but no CUDA GPU is visible; use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UserError(f"device {device} was asked for but only {torch.cuda.device_count()} GPU(s) are visible; "
                        "use cuda:0 or set CUDA_VISIBLE_DEVICES")
    return device


def build(name_or_config, inner_net: str | None = None, dtype="float16", device=None, seed: int | None = 0) -> DecodeLM:
    """A model with random weights (seeded) from a config name, alias or config object.

    Weights are drawn in float32 and then cast, so the same seed gives the same model in every dtype.
    """
    cfg = get_config(name_or_config) if isinstance(name_or_config, str) else name_or_config
    dtype, device = parse_dtype(dtype), resolve_device(device)
    if seed is not None:
        torch.manual_seed(seed)
    # Draw in float32 whatever the dtype: same seed, same weights in every dtype.
    init_dtype = torch.float32
    if isinstance(cfg, TTTConfig):
        from ttt_decode.models.ttt import TTTLM

        default = "mlp_1_dual" if cfg.ttt_layer_type == "linear" else "mlp_2_dual"
        model = TTTLM(cfg, inner_net or default, dtype=init_dtype, device=device)
    elif isinstance(cfg, MambaConfig):
        from ttt_decode.models.mamba import MambaLM, check_inner_net, default_inner_net

        inner_net = check_inner_net(inner_net or default_inner_net(device))
        model = MambaLM(cfg, dtype=init_dtype, device=device, inner_net=inner_net)
    elif isinstance(cfg, TransformerConfig):
        from ttt_decode.models.transformer import TransformerLM

        model = TransformerLM(cfg, inner_net, dtype=init_dtype, device=device)
    else:
        raise UserError(f"cannot build a model from {name_or_config!r}")
    model = model.to(dtype).eval()
    model.weights_source = f"random(seed={seed})"
    return model


@torch.no_grad()
def randomize_(model: torch.nn.Module, seed: int = 0, scale: float = 0.1) -> torch.nn.Module:
    """Perturb every parameter (biases and norm weights too) so tests never see structural zeros/ones."""
    gen = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        noise = torch.randn(p.shape, generator=gen, dtype=torch.float64)
        p.add_((scale * noise).to(device=p.device, dtype=p.dtype))
    return model


def from_pretrained(path, inner_net: str | None = None, dtype="float16", device=None) -> DecodeLM:
    """A model from a local checkpoint directory (config.json decides the kind); see models/checkpoint.py."""
    from ttt_decode.models.checkpoint import from_pretrained as _from_pretrained

    return _from_pretrained(path, inner_net=inner_net, dtype=dtype, device=device)


# Model-name prefixes that select an outside implementation (models/baselines.py).
BASELINE_PREFIXES = ("hf", "mamba-ssm")


def load_model(spec: str, inner_net: str | None = None, dtype="float16", device=None, seed: int | None = 0) -> DecodeLM:
    """The one entry point that turns a --model-name into a model:
    - a checkpoint directory (published Hugging Face layout) -> from_pretrained,
    - 'hf:<name>' / 'mamba-ssm:<name>' -> an outside implementation (models/baselines.py),
    - a config name or hub alias -> random weights (seeded)."""
    import os

    if os.path.isdir(spec):
        return from_pretrained(spec, inner_net=inner_net, dtype=dtype, device=device)
    prefix, sep, rest = spec.partition(":")
    if sep and prefix in BASELINE_PREFIXES:
        from ttt_decode.models.baselines import load_baseline

        return load_baseline(prefix, rest, inner_net=inner_net, dtype=dtype, device=device, seed=seed)
    from ttt_decode.models.checkpoint import check_model_path

    # A name that looks like a path but is no directory: "not found" says more than "unknown model".
    check_model_path(spec)
    return build(spec, inner_net=inner_net, dtype=dtype, device=device, seed=seed)
