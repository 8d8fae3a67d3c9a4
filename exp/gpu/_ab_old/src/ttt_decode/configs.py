"""Named model configurations (DESIGN section 3) and their validation.

Each config is a frozen dataclass checked on construction; `get_config(name)` looks names up in one
registry and rejects unknown names with the list of known ones. Inner-loop implementations of the
TTT layer are named separately (`inner_net`) because one checkpoint can run with any of them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace

from ttt_decode.errors import UserError

# The Mamba / GPT-NeoX vocabulary; embeddings are padded to a multiple of 8 for tensor cores.
DEFAULT_VOCAB = 50277
PAD_VOCAB_MULTIPLE = 8


def padded_vocab(vocab_size: int, multiple: int = PAD_VOCAB_MULTIPLE) -> int:
    return -(-vocab_size // multiple) * multiple


class _VocabMixin:
    """The LM head's vocabulary, padded to a multiple for the matmul (every config kind has one)."""

    @property
    def padded_vocab_size(self) -> int:
        return padded_vocab(self.vocab_size, self.pad_vocab_multiple)


@dataclass(frozen=True)
class TTTConfig(_VocabMixin):
    """The published TTT language model (ttt.py's TTTConfig, Mamba backbone by default)."""

    name: str
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    vocab_size: int = DEFAULT_VOCAB
    pad_vocab_multiple: int = PAD_VOCAB_MULTIPLE
    # Tokens per inner-loop mini-batch (b in DESIGN section 4).
    mini_batch_size: int = 16
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    ttt_base_lr: float = 1.0
    conv_kernel: int = 4
    # "Mamba backbone" of the published model: all three on. "Transformer backbone": all off.
    pre_conv: bool = True
    share_qk: bool = True
    use_gate: bool = True
    tie_word_embeddings: bool = True
    # Which inner model the checkpoint was trained with ("linear" = M1, "mlp" = M2); None = either.
    ttt_layer_type: str | None = None
    kind: str = field(default="ttt", init=False)

    def __post_init__(self):
        _check_positive(self, ("hidden_size", "num_layers", "num_heads", "intermediate_size", "vocab_size",
                               "mini_batch_size", "conv_kernel", "pad_vocab_multiple"))
        if self.hidden_size % self.num_heads:
            raise UserError(f"config {self.name!r}: hidden_size {self.hidden_size} is not divisible by "
                            f"num_heads {self.num_heads}; choose heads that divide the width")
        if self.head_dim % 2:
            raise UserError(f"config {self.name!r}: head_dim {self.head_dim} must be even for the rotary "
                            "embedding; change hidden_size or num_heads")
        if self.ttt_layer_type not in (None, "linear", "mlp"):
            raise UserError(f"config {self.name!r}: ttt_layer_type must be 'linear' or 'mlp', "
                            f"not {self.ttt_layer_type!r}")
        if self.ttt_base_lr <= 0 or self.rms_norm_eps <= 0 or self.rope_theta <= 0:
            raise UserError(f"config {self.name!r}: ttt_base_lr, rms_norm_eps and rope_theta must be > 0")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


@dataclass(frozen=True)
class MambaConfig(_VocabMixin):
    """Mamba-1 language model (state-spaces/mamba-* layout)."""

    name: str
    d_model: int
    n_layer: int
    vocab_size: int = DEFAULT_VOCAB
    pad_vocab_multiple: int = PAD_VOCAB_MULTIPLE
    d_state: int = 16
    expand: int = 2
    d_conv: int = 4
    # None means the published default ceil(d_model / 16).
    dt_rank: int | None = None
    rms_norm_eps: float = 1e-5
    conv_bias: bool = True
    proj_bias: bool = False
    tie_word_embeddings: bool = True
    kind: str = field(default="mamba", init=False)

    def __post_init__(self):
        _check_positive(self, ("d_model", "n_layer", "vocab_size", "d_state", "expand", "d_conv",
                               "pad_vocab_multiple"))
        if self.dt_rank is None:
            object.__setattr__(self, "dt_rank", math.ceil(self.d_model / 16))
        if self.dt_rank < 1:
            raise UserError(f"config {self.name!r}: dt_rank must be >= 1")

    @property
    def d_inner(self) -> int:
        return self.expand * self.d_model


@dataclass(frozen=True)
class TransformerConfig(_VocabMixin):
    """Llama-style Transformer: the baseline whose decode cost grows with context."""

    name: str
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    vocab_size: int = DEFAULT_VOCAB
    pad_vocab_multiple: int = PAD_VOCAB_MULTIPLE
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    # Default KV-cache capacity in tokens when the caller does not say (prompt + generation).
    max_seq_len: int = 4096
    tie_word_embeddings: bool = True
    kind: str = field(default="transformer", init=False)

    def __post_init__(self):
        _check_positive(self, ("hidden_size", "num_layers", "num_heads", "intermediate_size", "vocab_size",
                               "pad_vocab_multiple", "max_seq_len"))
        if self.hidden_size % self.num_heads or (self.hidden_size // self.num_heads) % 2:
            raise UserError(f"config {self.name!r}: hidden_size {self.hidden_size} must split into {self.num_heads} "
                            "heads of even size")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


def _check_positive(cfg, names):
    for n in names:
        v = getattr(cfg, n)
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise UserError(f"config {cfg.name!r}: {n} must be a positive integer, got {v!r}")


_TTT = [
    TTTConfig("ttt-125m", hidden_size=768, num_layers=12, num_heads=12, intermediate_size=2048),
    TTTConfig("ttt-350m", hidden_size=1024, num_layers=24, num_heads=16, intermediate_size=2736),
    TTTConfig("ttt-760m", hidden_size=1536, num_layers=24, num_heads=16, intermediate_size=4096),
    TTTConfig("ttt-1b", hidden_size=2048, num_layers=24, num_heads=32, intermediate_size=5504),
    # ttt-1b geometry with few layers: profiler traces in seconds.
    TTTConfig("ttt-profile", hidden_size=2048, num_layers=4, num_heads=32, intermediate_size=5504),
    # Test configs: head_dim 16 (ttt-tiny) and 64 (ttt-tiny-64), small vocab.
    TTTConfig("ttt-tiny", hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128, vocab_size=500),
    TTTConfig("ttt-tiny-64", hidden_size=128, num_layers=2, num_heads=2, intermediate_size=256, vocab_size=500),
    TTTConfig("ttt-tiny-transformer-backbone", hidden_size=64, num_layers=2, num_heads=4,
              intermediate_size=128, vocab_size=500, pre_conv=False, share_qk=False, use_gate=False),
]

_MAMBA = [
    MambaConfig("mamba-130m", d_model=768, n_layer=24),
    MambaConfig("mamba-370m", d_model=1024, n_layer=48),
    MambaConfig("mamba-790m", d_model=1536, n_layer=48),
    MambaConfig("mamba-1.4b", d_model=2048, n_layer=48),
    MambaConfig("mamba-2.8b", d_model=2560, n_layer=64),
    MambaConfig("mamba-tiny", d_model=64, n_layer=2, vocab_size=500),
]

_TRANSFORMER = [
    TransformerConfig("llama-1.3b", hidden_size=2048, num_layers=24, num_heads=32, intermediate_size=5504),
    TransformerConfig("llama-tiny", hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128, vocab_size=500,
                      max_seq_len=256),
]

CONFIGS: dict[str, TTTConfig | MambaConfig | TransformerConfig] = {c.name: c for c in _TTT + _MAMBA + _TRANSFORMER}

# Hugging Face hub names accepted for the configs (no download: weights are random unless a local
# checkpoint directory is given).
ALIASES = {f"state-spaces/{c.name}": c.name for c in _MAMBA if not c.name.endswith("tiny")}

def list_configs(kind: str | None = None) -> list[str]:
    return [n for n, c in CONFIGS.items() if kind is None or c.kind == kind]


def get_config(name: str, **overrides):
    """Config by name (or hub alias); keyword overrides give a validated variant."""
    key = ALIASES.get(name, name)
    if key not in CONFIGS:
        raise UserError(f"unknown model {name!r}; known models: {', '.join(list(CONFIGS) + list(ALIASES))}"
                        " (or pass a checkpoint directory)")
    cfg = CONFIGS[key]
    if overrides:
        allowed = {f.name for f in fields(cfg) if f.init}
        bad = sorted(set(overrides) - allowed)
        if bad:
            raise UserError(f"config {key!r} has no field(s) {', '.join(bad)}")
        cfg = replace(cfg, **overrides)
    return cfg
