"""Where a prefill's time goes: mamba-1.4b (B=16, 2048 tokens) and ttt-1b M1 and M2 dual (B=16, 512
tokens), random weights, fp16, last-only prefill (TTT_DECODE_PREFILL_GRAPHS as set in the environment).
Prints the wall time of one prefill after a warm-up, the summed self device time of torch.profiler's
entries and the top entries by it; writes the same as JSON.

    PYTHONPATH=src python3 exp/gpu/prefill_diag.py OUT.json

The sum counts each kernel about twice (once under the aten op that launched it, once as the kernel
itself), so about half of it is the kernel time. Kernel time near the (unprofiled) wall time means the
GPU is the limit; kernel time well below it means the host's dispatch of small ops is.
"""

import json
import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile

from ttt_decode.models.factory import build

out = {}
CASES = [("mamba-1.4b", "mamba_triton", 16, 2048), ("ttt-1b", "mlp_1_dual_triton", 16, 512),
         ("ttt-1b", "mlp_2_dual_triton", 16, 512)]  # the M2 case added after prefill_diag_h200_483f806.json
for name, net, B, N in CASES:
    m = build(name, net, dtype="float16", device="cuda")
    ids = torch.randint(0, 1000, (B, N), device="cuda")
    with torch.no_grad():
        st = m.allocate_state(B)
        m.prefill(ids, st, last_only=True)  # warm-up
        torch.cuda.synchronize()
        st = m.allocate_state(B)
        t0 = time.perf_counter()
        m.prefill(ids, st, last_only=True)
        torch.cuda.synchronize()
        wall = time.perf_counter() - t0
        st = m.allocate_state(B)
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            m.prefill(ids, st, last_only=True)
            torch.cuda.synchronize()
    entries = prof.key_averages()
    gpu = sum(e.self_device_time_total for e in entries) / 1e3
    top = sorted(entries, key=lambda e: -e.self_device_time_total)[:8]
    rows = [(e.key[:70], e.count, round(e.self_device_time_total / 1e3, 1)) for e in top]
    out[f"{name} {net}"] = {"B": B, "N": N, "wall_ms": round(wall * 1e3, 1), "gpu_self_ms": round(gpu, 1), "top": rows}
    print(f"{name} B={B} N={N}: wall {wall * 1e3:.0f} ms, kernel time {gpu:.0f} ms")
    for r in rows:
        print("   ", r)
    del m, st
    torch.cuda.empty_cache()
json.dump(out, open(sys.argv[1], "w"), indent=1)
