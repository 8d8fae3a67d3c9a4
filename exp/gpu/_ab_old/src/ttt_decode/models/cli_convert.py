"""`ttt-decode convert`: write a TTT checkpoint in the published layout (ttt.py's TTTForCausalLM).

    ttt-decode convert --model-name ttt-125m --inner_net mlp_2_dual --out ckpt/ttt-125m-m2   # random, seeded
    ttt-decode convert --model-name ckpt/ttt-125m-m2 --out ckpt/ttt-125m-m2-bf16 --dtype bfloat16
    ttt-decode convert --model-name ckpt/big --out ckpt/big-sharded --max-shard-size 2GB --verify

The output loads here (`--model-name DIR` in every command) and in the published implementation
(`TTTForCausalLM.from_pretrained(DIR)`), with the same logits.
"""

from __future__ import annotations

import os

import torch

from ttt_decode.configs import get_config
from ttt_decode.errors import UserError
from ttt_decode.models.checkpoint import (
    CONFIG_FILE,
    check_model_path,
    from_pretrained,
    is_mamba_checkpoint,
    read_config,
    save_pretrained,
)

# Random weights are drawn in float32 (models.build), so that is what a config name is written in by default.
RANDOM_DTYPE = "float32"
VERIFY_TOKENS = 24


def add_arguments(p):
    p.epilog = ("examples: convert --model-name ttt-125m --inner_net mlp_2_dual --out DIR (random weights, seeded); "
                "convert --model-name SRC_DIR --out DIR --dtype bfloat16 (re-save in another dtype). The output "
                "loads with --model-name DIR here and with TTTForCausalLM.from_pretrained(DIR) in ttt.py.")
    p.add_argument("--model-name", "--model_name", dest="model_name", required=True,
                   help="a TTT config name (ttt-125m, ttt-1b, ttt-tiny, ...: random weights from --seed) or a TTT "
                        "checkpoint directory to re-save")
    p.add_argument("--out", required=True, help="output directory (config.json + model.safetensors)")
    p.add_argument("--inner_net", "--inner-net", dest="inner_net", default=None,
                   help="for a config name, which TTT layer to write: mlp_1_* = TTT-Linear (ttt_layer_type "
                        "'linear'), mlp_2_* = TTT-MLP ('mlp'); default mlp_2_dual. For a checkpoint directory it "
                        "must match its ttt_layer_type")
    p.add_argument("--dtype", default=None,
                   help="dtype of the written tensors: float16, bfloat16, float32, float64 (default: the "
                        f"checkpoint's own dtype, {RANDOM_DTYPE} for random weights)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights of a config name (default 0)")
    p.add_argument("--max-shard-size", "--max_shard_size", dest="max_shard_size", default=None,
                   help="split the weights into shards of at most this size (e.g. 2GB, 500MB) with an index file, "
                        "as transformers does (default: one file)")
    p.add_argument("--bin", action="store_true", help="write pytorch_model.bin (torch.save) instead of safetensors")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the checkpoint files (config.json, weights, index) already in --out")
    p.add_argument("--verify", action="store_true",
                   help="reload the written checkpoint and check that every weight equals the saved model's and "
                        f"that its logits on {VERIFY_TOKENS} random tokens agree")


def _source_model(args):
    from ttt_decode import models

    if os.path.isdir(args.model_name):
        path = os.path.abspath(args.model_name)
        if os.path.abspath(args.out) == path:
            raise UserError(f"--out {args.out} is the source checkpoint; write to another directory")
        if is_mamba_checkpoint(read_config(path)):
            raise UserError(f"{os.path.join(path, CONFIG_FILE)} describes a Mamba model; convert writes TTT "
                            "checkpoints in ttt.py's layout")
        return from_pretrained(path, inner_net=args.inner_net, dtype=args.dtype, device="cpu")
    check_model_path(args.model_name)
    cfg = get_config(args.model_name)
    if cfg.kind != "ttt":
        raise UserError(f"{args.model_name} is a {cfg.kind} model; convert writes TTT checkpoints (ttt-125m, ttt-1b, "
                        "...)")
    return models.build(cfg, inner_net=args.inner_net, dtype=args.dtype or RANDOM_DTYPE, device="cpu", seed=args.seed)


def main(args) -> int:
    model = _source_model(args)
    out = save_pretrained(model, args.out, safe_serialization=not args.bin, max_shard_size=args.max_shard_size,
                          overwrite=args.overwrite)
    c = model.config
    files = sorted(n for n in os.listdir(out) if n != CONFIG_FILE)
    size = sum(os.path.getsize(os.path.join(out, n)) for n in files)
    backbone = {(True,) * 3: "Mamba backbone", (False,) * 3: "Transformer backbone"}.get(
        (c.pre_conv, c.share_qk, c.use_gate), f"pre_conv={c.pre_conv} share_qk={c.share_qk} use_gate={c.use_gate}")
    layer = "TTT-Linear (M1)" if model.kind == "linear" else "TTT-MLP (M2)"
    print(f"wrote {out}: {CONFIG_FILE} + {', '.join(files) if len(files) <= 3 else f'{len(files)} files'} "
          f"({size / 1e6:.1f} MB, {str(model.dtype).removeprefix('torch.')}) from {model.weights_source}")
    print(f"  {layer}, {backbone}, {c.num_layers} layers, hidden {c.hidden_size}, {c.num_heads} heads, "
          f"vocab {c.vocab_size}, tied embeddings {c.tie_word_embeddings}")
    if args.verify:
        print(f"  verify: {_verify(model, out)}")
    print(f"  run it: ttt-decode generate --model-name {out} --inner_net {model.inner_net}")
    return 0


def _verify(model, out: str) -> str:
    """Reload out: every weight must be equal, and the logits equal up to the rounding of the LM head matmul
    (the saved vocabulary drops the padding rows, which changes the matmul's blocking)."""
    loaded = from_pretrained(out, inner_net=model.inner_net, dtype=model.dtype, device="cpu")
    V = model.config.vocab_size
    saved = loaded.state_dict()
    for name, t in model.state_dict().items():
        if name in ("embed.weight", "lm_head_weight"):
            t = t[:V]
        if name not in saved or not torch.equal(saved[name], t):
            raise UserError(f"verify failed: tensor {name} of the checkpoint written to {out} differs from the saved "
                            "model; please report this")
    ids = torch.randint(0, V, (1, VERIFY_TOKENS), generator=torch.Generator().manual_seed(0))
    want, got = model(ids)[..., :V], loaded(ids)
    err = ((got - want).norm() / want.norm()).item()
    if err > 8 * torch.finfo(model.dtype).eps:
        raise UserError(f"verify failed: the checkpoint written to {out} gives other logits (relative error "
                        f"{err:.1e}); please report this")
    return f"weights equal, logits on {VERIFY_TOKENS} random tokens agree (relative error {err:.1e})"
