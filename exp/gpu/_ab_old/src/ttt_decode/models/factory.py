"""Models with random weights from a config: `build`, and `randomize_` for tests.

Kept apart from the package's `__init__` (which also dispatches to checkpoints and outside baselines)
so that those modules can build a model without importing the package that imports them.
"""

from __future__ import annotations

import torch

from ttt_decode import registry
from ttt_decode.configs import MambaConfig, TransformerConfig, TTTConfig, get_config
from ttt_decode.dtypes import parse_dtype, resolve_device
from ttt_decode.errors import UserError
from ttt_decode.models.common import DecodeLM


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

        model = TTTLM(cfg, inner_net or registry.default("ttt", device.type, cfg.ttt_layer_type), dtype=init_dtype,
                      device=device)
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
