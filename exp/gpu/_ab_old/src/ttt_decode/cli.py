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
    "micro": ("ttt_decode.bench.micro",
              "per-layer time of the decode kernels vs copy bandwidth (perf_report, PNG, JSON)"),
    "convert": ("ttt_decode.models.cli_convert", "write a TTT checkpoint in ttt.py's published layout"),
    "bench": ("ttt_decode.bench.cell",
              "one benchmark cell (seed-compatible flags): time prefill/decode, append a record"),
    "calibrate": ("ttt_decode.bench.roofline", "measure copy bandwidth and matmul rate of this device (the roofline)"),
    "profile": ("ttt_decode.bench.profile_cmd", "profiler trace (Perfetto) and step-time breakdown by stage"),
    "sweep": ("ttt_decode.bench.sweep", "models x inner nets x batches x lengths, one process per cell, OOM-proof"),
    "report": ("ttt_decode.bench.report", "Markdown tables, throughput and context plots from records"),
}


# Exit code of every command when a result, log or cache file could not be written (disk full, ...).
EXIT_WRITE_FAILED = 4


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
    from ttt_decode import provenance  # the command line every result record carries

    given = sys.argv[1:] if argv is None else list(argv)
    prog = os.path.basename(sys.argv[0]) if argv is None else "ttt-decode"
    if prog in ("cli.py", "__main__.py", "-c"):
        prog = "ttt-decode"
    provenance.INVOCATION = " ".join(shlex.quote(a) for a in [prog, *given])
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
