"""The M2 dual decode kernel compiled for sm_90 without a GPU (Triton's bundled ptxas / nvdisasm): registers,
spills, shared memory and its SASS instruction mix, per loop. For checking a kernel change before device time.

    python exp/gpu/offline_sass.py                                # the capped configuration (dual_config, B=512)
    python exp/gpu/offline_sass.py '{"PREFETCH_A": 1}' --dump /tmp/sass.txt
    python exp/gpu/offline_sass.py '{"maxnreg": null}' --batch 64   # the configuration at B=64, with overrides

The kernel as ops.ttt_mlp.triton_decode.compile_offline builds it (the kernel micro-benchmark's signature, ttt-1b
shapes, fp16). Loops are counted between a backward branch and its target label. TRITON_INTERPRET must be
unset.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import subprocess
import tempfile

os.environ.pop("TRITON_INTERPRET", None)

import torch  # noqa: E402
import triton  # noqa: E402

from ttt_decode.ops.ttt_mlp import triton_decode as td  # noqa: E402


def _tool(name: str, kernel, *flags) -> str:
    path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)
    with tempfile.NamedTemporaryFile(suffix=".cubin") as fh:
        fh.write(kernel.asm["cubin"])
        fh.flush()
        return subprocess.run([path, *flags, fh.name], check=True, capture_output=True, text=True).stdout


def sass_of(kernel) -> str:
    return _tool("nvdisasm", kernel, "-c")


def resources(kernel) -> dict:
    """REG / STACK / SHARED / LOCAL of the cubin (cuobjdump's resource usage)."""
    text = _tool("cuobjdump", kernel, "-res-usage")
    return {k: int(v) for k, v in re.findall(r"\b(REG|STACK|SHARED|LOCAL):(\d+)", text)}


def loops(sass: str) -> list[dict]:
    """Backward branches: (label, instructions in the loop body, opcode counts)."""
    lines = sass.splitlines()
    label_at, instrs = {}, []
    for line in lines:
        m = re.match(r"^\.(L_x_\d+):", line.strip())
        if m:
            label_at[m.group(1)] = len(instrs)
            continue
        m = re.match(r"^\s*/\*([0-9a-f]{4,})\*/\s+(.*?);", line)
        if m:
            instrs.append(m.group(2))
    out = []
    for i, ins in enumerate(instrs):
        m = re.search(r"\bBRA\b.*`\(\.(L_x_\d+)\)", ins)
        if m and m.group(1) in label_at and label_at[m.group(1)] <= i:
            body = instrs[label_at[m.group(1)]:i + 1]
            ops = collections.Counter(_opcode(x) for x in body)
            out.append({"label": m.group(1), "start": label_at[m.group(1)], "n": len(body),
                        "top": dict(ops.most_common(8)),
                        "spills": sum(ops[k] for k in ops if k.startswith(("STL", "LDL"))),
                        "prefetch": sum(ops[k] for k in ops if k.startswith("CCTL"))})
    return out, instrs


def _opcode(ins: str) -> str:
    ins = re.sub(r"^@!?U?P\w+\s+", "", ins.strip())
    return ins.split()[0] if ins else ""


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="?", default="{}", help="JSON: keys of dual_config to change")
    p.add_argument("--batch", type=int, default=512, help="the batch whose dual_config is the base")
    p.add_argument("--dump", default=None, help="write the SASS here")
    a = p.parse_args()
    cfg = {**td.dual_config(a.batch, 64, torch.float16), **json.loads(a.overrides)}
    k = td.compile_offline(cfg)
    sass = sass_of(k)
    if a.dump:
        open(a.dump, "w").write(sass)
    found, instrs = loops(sass)
    ops = collections.Counter(_opcode(x) for x in instrs)
    print(json.dumps(cfg))
    res = resources(k)
    print(f"registers {res.get('REG')}, stack {res.get('STACK')} B, shared {k.metadata.shared} B, {len(instrs)} "
          "instructions, "
          f"CCTL (prefetch) {sum(v for o, v in ops.items() if o.startswith('CCTL'))}, "
          f"STL/LDL {sum(v for o, v in ops.items() if o.startswith(('STL', 'LDL')))}")
    for lp in found:
        print(f"  loop at {lp['start']:5d}: {lp['n']:4d} instructions, spills {lp['spills']}, "
              f"prefetch {lp['prefetch']}, {lp['top']}")


if __name__ == "__main__":
    main()
