"""Published TTT checkpoints vs ttt_decode, on CPU in float64: same weights, same logits, in both directions.

  ttt.py -> ours   a tiny ttt.py TTTForCausalLM (random weights, every parameter perturbed) is written by its
                   own save_pretrained (safetensors), loaded by ttt_decode.models.from_pretrained, and
                   ttt.py's full-sequence forward over 37 tokens (batch 2) is compared with our teacher_force:
                   a 20-token prefill, then 17 tokens decoded one at a time.
  ours -> ttt.py   our tiny model (random, perturbed) is written by ttt_decode's save_pretrained, loaded into a
                   ttt.py model built from the written config.json (load_state_dict, strict=True), and its
                   full-sequence forward is compared with ours (teacher_force, and our full forward).

Cases: ttt_layer_type linear (M1) / mlp (M2) x Mamba backbone (pre_conv, share_qk, use_gate) / Transformer
backbone (all three off), each with the inner net our loader picks (mlp_{1,2}_dual) and the primal one.

ttt.py is the official implementation (test-time-training/ttt-lm-pytorch), kept outside this repository with
one patch for transformers 5 (see the PATCH comment in ttt.py). It is imported, never copied into ttt_decode.

Two float32 islands of ttt.py are kept as published: RMSNorm normalises in float32 (`.to(torch.float32)`),
and TTTForCausalLM.forward ends with `logits.float()`. The second only rounds the output, so the reference
logits here are its lm_head applied to the float64 hidden states (checked to agree with forward().logits to
float32 rounding). The first is real arithmetic; --rmsnorm-f64 runs ttt.py's RMSNorm in the input dtype
(a monkeypatch in this script, not in ttt.py) to show what remains without it. One more small difference is
a constant: ttt.py's gelu_bwd (TTT-MLP inner gradient) uses sqrt(2/pi) ~ 0.79788456 (8 digits, from
Megatron), ours the exact value; --exact-gelu-bwd gives ttt.py the exact constant (diagnostic, same way).

    TTT_PY_DIR=<folder with ttt.py> python exp/external/check_published_checkpoints.py [--rmsnorm-f64] [--exact-gelu-bwd]

(ttt-lm-pytorch commit cd831db1, ttt.py patched in one line for transformers 5:
 _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}.)
"""

import argparse
import math
import os
import sys
import tempfile

import torch
from safetensors.torch import load_file

# ttt.py lives outside this repository (the project must not contain it): TTT_PY_DIR names its folder.
sys.path.insert(0, os.environ.get("TTT_PY_DIR", os.path.dirname(os.path.abspath(__file__))))
try:
    import ttt as ref  # noqa: E402
except ImportError as e:
    sys.exit(f"cannot import ttt.py ({e}): set TTT_PY_DIR to a folder holding a copy of the official ttt.py")
from transformers.utils import logging as hf_logging  # noqa: E402

from ttt_decode import models  # noqa: E402
from ttt_decode.configs import get_config  # noqa: E402
from ttt_decode.decode.engine import teacher_force  # noqa: E402
from ttt_decode.models.checkpoint import save_pretrained  # noqa: E402

hf_logging.set_verbosity_error()
hf_logging.disable_progress_bar()

B, N, N_PROMPT, V = 2, 37, 20, 100
TINY = dict(vocab_size=V, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
            mini_batch_size=16)
BACKBONES = {"mamba": dict(pre_conv=True, share_qk=True, use_gate=True),
             "transformer": dict(pre_conv=False, share_qk=False, use_gate=False)}
OUR_CONFIG = {"mamba": "ttt-tiny", "transformer": "ttt-tiny-transformer-backbone"}
INNER_NETS = {"linear": ("mlp_1_dual", "mlp_1_primal"), "mlp": ("mlp_2_dual", "mlp_2_primal")}
TARGET = 1e-6


def errors(got: torch.Tensor, want: torch.Tensor) -> tuple[float, float]:
    """(||got - want|| / ||want||, max|got - want| / max|want|)."""
    diff = (got - want).double()
    want = want.double()
    return (diff.norm() / want.norm()).item(), (diff.abs().max() / want.abs().max()).item()


@torch.no_grad()
def perturb_(model: torch.nn.Module, seed: int, scale: float = 0.1) -> None:
    """Add N(0, scale^2) noise to every parameter: no norm weight stays 1, no bias / learnable lr stays 0."""
    gen = torch.Generator().manual_seed(seed)
    for p in model.parameters():  # a tied head is the embedding itself: perturbed once
        p.add_(scale * torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.dtype))


def build_ref(config: "ref.TTTConfig") -> "ref.TTTForCausalLM":
    """A ttt.py model built from its config class (not from_pretrained: transformers 5 may leave the
    non-persistent buffers token_idx and inv_freq uninitialised). Built with float32 as the default dtype,
    as ttt.py is normally run, then cast: token_idx = 1/(i+1) holds float32 values, as in ttt.py."""
    return ref.TTTForCausalLM(config).double().eval()


@torch.no_grad()
def ref_logits(model: "ref.TTTForCausalLM", ids: torch.Tensor) -> torch.Tensor:
    """ttt.py's full-sequence forward, without the final float32 cast of the logits."""
    hidden = model.model(input_ids=ids, use_cache=False).last_hidden_state
    logits = model.lm_head(hidden)
    published = model(input_ids=ids, use_cache=False).logits  # float32: logits.float()
    assert published.dtype == torch.float32 and errors(published, logits)[0] < 1e-6
    return logits


def ours_outputs(model, ids) -> dict[str, torch.Tensor]:
    """Our logits (real vocabulary columns only): decode path and full forward."""
    with torch.no_grad():
        full = model(ids)
    return {"teacher_force": teacher_force(model, ids, N_PROMPT)[..., :V], "forward": full[..., :V]}


def ttt_py_to_ours(layer_type: str, backbone: str, seed: int, tmp: str) -> list[tuple]:
    torch.manual_seed(seed)
    ttt_model = build_ref(ref.TTTConfig(**TINY, **BACKBONES[backbone], ttt_layer_type=layer_type))
    perturb_(ttt_model, seed)
    path = os.path.join(tmp, f"ttt_py-{layer_type}-{backbone}")
    ttt_model.save_pretrained(path, safe_serialization=True)

    ids = torch.randint(0, V, (B, N), generator=torch.Generator().manual_seed(seed + 1))
    want = ref_logits(ttt_model, ids)
    rows = []
    for inner_net in (None,) + INNER_NETS[layer_type][1:]:  # None: the one our loader picks
        ours = models.from_pretrained(path, inner_net=inner_net, dtype=torch.float64, device="cpu")
        assert ours.kind == layer_type
        got = ours_outputs(ours, ids)
        rows.append(("ttt.py -> ours", ours.inner_net + ("" if inner_net else " (default)"),
                     *errors(got["teacher_force"], want), errors(got["forward"], want)[0]))
    return rows


def ours_to_ttt_py(layer_type: str, backbone: str, seed: int, tmp: str) -> list[tuple]:
    rows = []
    for inner_net in INNER_NETS[layer_type]:
        cfg = get_config(OUR_CONFIG[backbone], vocab_size=V, ttt_layer_type=layer_type)
        ours = models.randomize_(models.build(cfg, inner_net=inner_net, dtype=torch.float64, device="cpu"), seed=seed)
        path = save_pretrained(ours, os.path.join(tmp, f"ours-{layer_type}-{backbone}-{inner_net}"))

        config = ref.TTTConfig.from_pretrained(path)  # the config class only; weights below
        assert config.ttt_layer_type == layer_type and config.pre_conv == (backbone == "mamba")
        ttt_model = build_ref(config)
        tensors = load_file(os.path.join(path, "model.safetensors"))
        if config.tie_word_embeddings:  # a tied head is not written; transformers would tie it on load
            assert "lm_head.weight" not in tensors
            tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"]
        ttt_model.load_state_dict(tensors, strict=True)

        ids = torch.randint(0, V, (B, N), generator=torch.Generator().manual_seed(seed + 1))
        want = ref_logits(ttt_model, ids)
        got = ours_outputs(ours, ids)
        rows.append(("ours -> ttt.py", inner_net, *errors(got["teacher_force"], want), errors(got["forward"], want)[0]))
    return rows


def use_float64_rmsnorm() -> None:
    """Diagnostic only: ttt.py's RMSNorm without its float32 cast (this process only; ttt.py is unchanged)."""
    def forward(self, x):
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))

    ref.RMSNorm.forward = forward


def use_exact_gelu_bwd() -> None:
    """Diagnostic only: ttt.py's gelu_bwd with sqrt(2/pi) to full precision (this process only)."""
    c = math.sqrt(2 / math.pi)

    def gelu_bwd(x):
        t = torch.tanh(c * x * (1 + 0.044715 * x * x))
        return 0.5 * x * ((1 - t * t) * (c + 3 * 0.044715 * c * x * x)) + 0.5 * (1 + t)

    ref.gelu_bwd = gelu_bwd


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rmsnorm-f64", action="store_true", help="run ttt.py's RMSNorm in float64 (diagnostic)")
    parser.add_argument("--exact-gelu-bwd", action="store_true", help="exact sqrt(2/pi) in ttt.py's gelu_bwd "
                        "(diagnostic)")
    args = parser.parse_args()
    if args.rmsnorm_f64:
        use_float64_rmsnorm()
    if args.exact_gelu_bwd:
        use_exact_gelu_bwd()

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed, (layer_type, backbone) in enumerate(
                [(t, b) for t in ("linear", "mlp") for b in ("mamba", "transformer")]):
            case = f"{'M1 linear' if layer_type == 'linear' else 'M2 mlp'}, {backbone} backbone"
            for row in ttt_py_to_ours(layer_type, backbone, seed, tmp) + ours_to_ttt_py(layer_type, backbone, seed, tmp):
                rows.append((case, *row))

    print(f"float64, CPU, batch {B}, {N} tokens ({N_PROMPT} prefilled + {N - N_PROMPT} decoded), vocab {V}; "
          f"ttt.py RMSNorm in {'float64 (diagnostic)' if args.rmsnorm_f64 else 'float32 (as published)'}, "
          f"gelu_bwd constant {'exact (diagnostic)' if args.exact_gelu_bwd else '0.79788456 (as published)'}")
    print("rel = ||ours - ttt.py|| / ||ttt.py||, maxabs = max|ours - ttt.py| / max|ttt.py|; "
          "ours = teacher_force unless 'fwd'")
    head = ("case", "direction", "our inner net", "rel", "maxabs", "rel fwd")
    widths = (32, 15, 21, 9, 9, 9)
    print("  ".join(h.ljust(w) for h, w in zip(head, widths)))
    for case, direction, net, rel, maxabs, rel_fwd in rows:
        print("  ".join([case.ljust(32), direction.ljust(15), net.ljust(21),
                         f"{rel:.2e}".ljust(9), f"{maxabs:.2e}".ljust(9), f"{rel_fwd:.2e}"]))
    worst = max(max(r[3:]) for r in rows)
    ok = worst < TARGET
    print(f"worst error {worst:.2e}: {'PASS' if ok else 'FAIL'} (target < {TARGET:g})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
