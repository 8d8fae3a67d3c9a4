"""Model construction: `build(name, inner_net=..., dtype=..., device=...)` for every model family.

    model = build("ttt-1b", inner_net="mlp_2_dual", dtype=torch.float16, device="cuda")
"""

from __future__ import annotations

from ttt_decode.models.common import DecodeLM
from ttt_decode.models.factory import build, randomize_

__all__ = ["DecodeLM", "build", "randomize_", "from_pretrained", "load_model"]


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
