"""`ttt-decode <command>`: the command-line entry point.

Each command lives in its own module exposing `add_arguments(parser)` and `main(args) -> int`;
this file only wires them together and turns user errors into one-line messages (exit code 2) and
failed writes of results, logs or caches into one-line messages (exit code 4).
"""

from __future__ import annotations

import argparse
import importlib
import os
import shlex
import sys

from ttt_decode.errors import RecordWriteError, UserError

# command -> (module, one-line help). Modules are imported only when their command runs.
COMMANDS = {
    "generate": ("ttt_decode.decode.cli_generate", "generate tokens from a random prompt and print tokens/s"),
    "check": ("ttt_decode.decode.check", "equivalence checks: decode vs forward, graph vs eager, fidelity, ..."),
    "doctor": ("ttt_decode.doctor", "what is installed and usable here, one line each"),
    "micro": ("ttt_decode.bench.micro", "per-layer time of the decode kernels vs copy bandwidth (perf_report, PNG, JSON)"),
    "convert": ("ttt_decode.models.cli_convert", "write a TTT checkpoint in ttt.py's published layout"),
    "bench": ("ttt_decode.bench.cell", "one benchmark cell (seed-compatible flags): time prefill/decode, append a record"),
    "calibrate": ("ttt_decode.bench.roofline", "measure copy bandwidth and matmul rate of this device (the roofline)"),
    "profile": ("ttt_decode.bench.profiler", "profiler trace (Perfetto) and step-time breakdown by stage"),
    "sweep": ("ttt_decode.bench.sweep", "models x inner nets x batches x lengths, one process per cell, OOM-proof"),
    "report": ("ttt_decode.bench.report", "Markdown table and throughput plot (with the roofline) from records"),
}


# Exit code of every command when a result, log or cache file could not be written (disk full, ...).
EXIT_WRITE_FAILED = 4


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
    from ttt_decode.models import parse_device

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


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        # One line, no usage dump: the fix is in the message or in --help.
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ttt-decode", description="Decode-throughput toolkit for TTT-Linear, TTT-MLP and Mamba.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from ttt_decode.bench import records  # the command line every result record carries

    given = sys.argv[1:] if argv is None else list(argv)
    prog = os.path.basename(sys.argv[0]) if argv is None else "ttt-decode"
    if prog in ("cli.py", "__main__.py", "-c"):
        prog = "ttt-decode"
    records.INVOCATION = " ".join(shlex.quote(a) for a in [prog, *given])
    try:
        return importlib.import_module(args._module).main(args) or 0
    except UserError as e:
        print(f"ttt-decode {args.command}: error: {e}", file=sys.stderr)
        return 2
    except RecordWriteError as e:
        print(f"ttt-decode {args.command}: error: {e}", file=sys.stderr)
        return EXIT_WRITE_FAILED


if __name__ == "__main__":
    sys.exit(main())
