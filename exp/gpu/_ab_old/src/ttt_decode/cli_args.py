"""Command-line argument helpers shared by every command: the model flags and the value checks.

A leaf module (it imports nothing of the project but its errors and value parsing), so a command's
module can take its flags from here without importing the entry point that imports it.
"""

from __future__ import annotations

import argparse

from ttt_decode.dtypes import parse_device
from ttt_decode.errors import UserError


def add_model_args(p: argparse.ArgumentParser, default_model: str = "ttt-tiny") -> None:
    """Flags shared by every command that builds a model."""
    p.add_argument("--model-name", "--model_name", dest="model_name", default=default_model,
                   help="config name (ttt-1b, ttt-tiny, mamba-1.4b, state-spaces/mamba-1.4b, llama-1.3b, ...), "
                        "a checkpoint directory, or an outside baseline hf:mamba-1.4b / mamba-ssm:mamba-1.4b "
                        f"(default: {default_model})")
    p.add_argument("--inner_net", "--inner-net", dest="inner_net", default=None,
                   help="implementation: TTT inner loop mlp_1_dual, mlp_2_dual, mlp_1_dual_triton, "
                        "mlp_2_dual_triton, mlp_1_primal, mlp_2_primal (+ _triton), default mlp_2_dual (M2); "
                        "Mamba: mamba_triton (default on CUDA) or mamba_ref; Transformer: attn_triton or attn_ref")
    p.add_argument("--dtype", default="float16", help="weight dtype: float16, bfloat16, float32, float64 "
                   "(default float16)")
    p.add_argument("--state-dtype", "--state_dtype", dest="state_dtype", default=None,
                   help="recurrent-state dtype (default: the weight dtype for TTT and the KV cache, float32 "
                        "for Mamba)")
    p.add_argument("--device", type=device_arg, default=None, help="cpu, cuda or cuda:N (default: cuda if available)")
    p.add_argument("--seed", type=int, default=0, help="seed for random weights and prompts (default 0)")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def device_arg(text: str) -> str:
    """--device: cpu, cuda or cuda:N, checked when the flags are parsed (tpu, mps, CPU, meta are refused)."""
    try:
        parse_device(text)
    except UserError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def add_decode_args(p: argparse.ArgumentParser, batch: int, promptlen: int, genlen: int, genlen_help: str) -> None:
    """Flags of every command that runs a decode: batch, prompt and generation lengths, CUDA graph, compile."""
    p.add_argument("--batch", type=positive_int, default=batch, help=f"sequences decoded together (default {batch})")
    p.add_argument("--promptlen", type=positive_int, default=promptlen,
                   help=f"prompt tokens (random ids; default {promptlen})")
    p.add_argument("--genlen", type=positive_int, default=genlen, help=f"{genlen_help} (default {genlen})")
    p.add_argument("--use_compile", "--use-compile", dest="use_compile", action="store_true",
                   help="torch.compile the decode step (before the CUDA graph is captured)")
    p.add_argument("--no_cg", "--no-cg", dest="no_cg", action="store_true",
                   help="run each decode step eagerly instead of replaying one CUDA graph")
