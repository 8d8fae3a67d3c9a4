"""Programmatic dependent launch (ops/pdl.py): where it is switched on, and that a kernel opting in waits."""

import os
import subprocess
import sys

import torch

from ttt_decode.ops import pdl


def test_pdl_only_on_hopper_cuda_outside_the_interpreter(monkeypatch):
    monkeypatch.setattr(pdl, "_capable", lambda index: index == 0)  # device 0 "sm_90", device 1 older
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.delenv("TTT_DECODE_PDL", raising=False)
    assert pdl.launch_options(torch.device("cuda", 0)) == {"PDL": True, "launch_pdl": True}
    assert pdl.launch_options(torch.device("cuda", 1)) == {"PDL": False}
    assert pdl.launch_options(torch.device("cpu")) == {"PDL": False}
    monkeypatch.setenv("TTT_DECODE_PDL", "0")  # the switch for an A/B
    assert pdl.launch_options(torch.device("cuda", 0)) == {"PDL": False}
    monkeypatch.delenv("TTT_DECODE_PDL")
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # the interpreter cannot run griddepcontrol
    assert pdl.launch_options(torch.device("cuda", 0)) == {"PDL": False}


def test_pdl_kernel_waits_before_reading_the_previous_kernels_output():
    """Compiled for sm_90 (Triton's bundled ptxas, in a process without the interpreter): with PDL the block
    boundary kernel has exactly one griddepcontrol.wait, after the loads of h and of the norm weight (which
    no previous kernel is writing) and before the load of delta (out_proj's output); without PDL none."""
    code = r'''
import re, triton, triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from ttt_decode.ops.mamba import triton_decode as td
names = ["h_ptr", "d_ptr", "w_ptr", "hout_ptr", "x_ptr", "dim", "stride_h", "stride_d", "eps"]
types = ["*fp32", "*fp16", "*fp16", "*fp32", "*fp16", "i32", "i32", "i32", "fp32"]
sig = dict(zip(names, types)) | {k: "constexpr" for k in ("BLOCK", "COMPUTE", "PDL")}
for on in (True, False):
    src = ASTSource(fn=td._add_rms_norm_kernel, signature=sig, constexprs={"BLOCK": 2048, "COMPUTE": tl.float32, "PDL": on})
    ptx = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 8, "launch_pdl": on}).asm["ptx"]
    lines = ptx.splitlines()
    waits = [i for i, l in enumerate(lines) if "griddepcontrol.wait" in l]
    loads = [i for i, l in enumerate(lines) if re.search(r"\bld\.global", l)]
    print(len(waits), sum(i < waits[0] for i in loads) if waits else -1, sum(i > waits[0] for i in loads) if waits else -1)
'''
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    with_pdl, without = (list(map(int, line.split())) for line in res.stdout.split("\n")[:2])
    assert with_pdl[0] == 1 and with_pdl[1] >= 2 and with_pdl[2] >= 1, res.stdout
    assert without == [0, -1, -1], res.stdout
