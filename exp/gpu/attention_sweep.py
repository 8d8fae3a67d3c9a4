"""Launch configurations of the decode attention kernel (ops/attention/triton_decode.py) at llama-1.3b's
layer shapes (H 32, f 64, fp16), by batch and context: one-pass against split ("flash-decoding").

Each configuration is first checked against the float64 reference (n = 777 and n = the context, a
cache of the context's length); then one layer's call is timed by CUDA-graph replay
(bench.micro.time_calls) with n = the context. Bandwidth is on the compulsory bytes (K and V rows
read, q in, out out), against the copy bandwidth measured in the same run. Writes one JSON line per
(batch, context, configuration) and prints the best configuration per cell and its gain over the
default.

    PYTHONPATH=src python3 exp/gpu/attention_sweep.py --out OUT.jsonl [--batches 16,64] [--contexts 1024,...]
"""

import argparse
import itertools
import json
import math

import torch

from ttt_decode.bench.micro import copy_bandwidth, rel_err, time_calls
from ttt_decode.ops.attention import naive, triton_decode

# Chosen from the kernels' registers compiled offline for sm_90 (exp/NOTES.md): the default (64 rows, 4 warps)
# holds 247 registers, so 2 programs (8 warps) per multiprocessor with ~32 KB of K/V in flight; 1-2 warps
# on 16-64 rows fit 8-23 programs, which at batch 16 (512 (sequence, head) programs for 132 multiprocessors)
# only the split launch can fill.
ONE_PASS = [(64, 4), (64, 1), (64, 8), (32, 1), (32, 2), (16, 2)]
CONFIGS = ([dict(BLOCK_T=b, num_warps=w, splits=1) for b, w in ONE_PASS]
           + [dict(BLOCK_T=b, num_warps=w, splits=s) for b, w in ONE_PASS[1:] for s in (2, 4, 8)])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--batches", default="16,64")
    p.add_argument("--contexts", default="1024,4096,16384,32768")
    p.add_argument("--commit", default="unknown")
    p.add_argument("--device", default="cuda", help="cpu: a smoke test under TRITON_INTERPRET=1 at tiny sizes")
    a = p.parse_args()
    dev = torch.device(a.device)
    H, f = 32, 64
    copy = copy_bandwidth(dev)["gb_per_s"]
    print(f"copy bandwidth {copy:.0f} GB/s")
    rows = []
    with open(a.out, "w") as fh:
        for B, T in itertools.product(map(int, a.batches.split(",")), map(int, a.contexts.split(","))):
            g = torch.Generator(device=dev).manual_seed(T)
            q = torch.randn(B, H, f, device=dev, generator=g).half()
            k, v = (torch.randn(B, H, T, f, device=dev, generator=g).half() for _ in range(2))
            out = torch.empty_like(q)
            n = torch.tensor([T], device=dev)
            # The reference at this size would need B H T float64 scores: checked on the first 8 sequences.
            q8, k8, v8 = q[:8].contiguous(), k[:8].contiguous(), v[:8].contiguous()
            refs = {m: naive.decode_attention(q8.double(), k8.double(), v8.double(), torch.tensor([m], device=dev))
                    for m in sorted({min(777, T), T})}
            nbytes = B * H * (2 * T * f * 2 + 2 * f * 2)
            for cfg in CONFIGS:
                err = max(rel_err(triton_decode.launch(q8, k8, v8, torch.tensor([m], device=dev),
                                                       torch.empty_like(q8), cfg), ref) for m, ref in refs.items())
                t = time_calls([lambda: triton_decode.launch(q, k, v, n, out, cfg)], dev, replays=20)
                rec = {"batch": B, "context": T, **cfg, "us": round(t["us"], 2), "p10": round(t["p10"], 2),
                       "p90": round(t["p90"], 2), "gb_per_s": round(nbytes / t["us"] / 1e3, 1),
                       "pct_copy_bw": round(100 * nbytes / t["us"] / 1e3 / copy, 1), "copy_gb_per_s": round(copy),
                       "max_rel_err": err, "ok": err <= 1e-2 and math.isfinite(err), "commit": a.commit,
                       "gpu": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu"}
                fh.write(json.dumps(rec) + "\n")
                rows.append(rec)
            q = k = v = q8 = k8 = v8 = refs = None  # freed before the next cell allocates
            torch.cuda.empty_cache()
    # The configuration the dispatcher picks (triton_decode.pick_config) against the fastest one measured,
    # and against the one-pass launch on 4 warps (the default before this sweep's first record).
    print("| B | context | 64 rows 4 warps us | picked config | picked us (% copy) | best config | best us "
          "| best / picked |")
    print("|---|---|---|---|---|---|---|---|")
    key = ("BLOCK_T", "num_warps", "splits")
    name = lambda r: f"{r['BLOCK_T']} rows, {r['num_warps']} warps, {r['splits']} splits"  # noqa: E731
    for (B, T), cell in itertools.groupby(rows, key=lambda r: (r["batch"], r["context"])):
        cell = [r for r in cell if r["ok"]]
        if not cell:
            print(f"| {B} | {T} | every configuration failed its check against the reference (see the records) |")
            continue
        pick = triton_decode.pick_config(B * H, T)
        p = next((r for r in cell if all(r[k] == pick[k] for k in key)), None)
        old = next((r for r in cell if (r["BLOCK_T"], r["num_warps"], r["splits"]) == (64, 4, 1)), None)
        b = min(cell, key=lambda r: r["us"])
        old_us = f"{old['us']:.0f}" if old else "-"
        picked = f"{p['us']:.0f} ({p['pct_copy_bw']:.0f}%)" if p else "not measured"
        ratio = f"{b['us'] / p['us']:.2f}" if p else "-"
        print(f"| {B} | {T} | {old_us} | {name(pick)} | {picked} | {name(b)} | {b['us']:.0f} | {ratio} |")

if __name__ == "__main__":
    main()
