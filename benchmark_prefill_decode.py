#!/usr/bin/env python
"""Seed-compatible benchmark cell: `python benchmark_prefill_decode.py --logdir DIR --model-name ttt-1b ...`.

Same as `ttt-decode bench`; runs from a fresh clone without installing (src/ is put on the path).
See `python benchmark_prefill_decode.py --help` for every flag.
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "src"))

from ttt_decode.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["bench"] + sys.argv[1:]))
