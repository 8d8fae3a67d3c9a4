"""`ttt-decode profile`: a decode cell with --profile (bench/profiler.py says what the two modes show)."""

from __future__ import annotations

from ttt_decode.bench.cell import add_arguments as cell_arguments
from ttt_decode.bench.cell import main as cell_main


def add_arguments(p):
    cell_arguments(p)
    p.set_defaults(mode="decode", genlen=8, no_cg=True, profile=True, repeats=1)


def main(args) -> int:
    """`ttt-decode profile`: a decode cell with --profile (eager steps, or with --use_compile the compiled
    step's CUDA-graph replays; trace + breakdown)."""
    args.profile = True
    if args.use_compile:
        args.no_cg = False
    return cell_main(args)
