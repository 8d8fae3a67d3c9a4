"""Issue 3 GPU evidence (TTT decode kernels): correctness at real shapes first, then timings of launch configurations.

    PYTHONUNBUFFERED=1 PYTHONPATH=src python3 exp/gpu/kernels_check_and_time.py --out $OUT/kernels.jsonl [--run N]
    (--smoke: the same code paths on CPU at tiny sizes under TRITON_INTERPRET=1; its times mean nothing)

Stages (each guarded: a failure is recorded and the next stage runs; later stages skip near the deadline):
  env      GPU, versions, copy bandwidth (bench.micro.copy_bandwidth: best of three ways, read + write).
  check    every Triton kernel (M1/M2 x dual/primal) vs float64 at ttt-1b shapes (B 16, H 32, f 64) for
           fp16 / bf16 / fp32 state, and at f 128 (H 8) for fp16 (bench.micro.check_ttt_variant: 2 mini-batches
           + 1 token, errors vs the PyTorch op in the same dtypes).
  sweep    per kernel, hand-picked launch configurations (tile width BLOCK_F, num_warps, maxnreg, W2 re-read,
           update on tensor cores or CUDA cores) at B = 512, fp16 state: each checked at B 3 first, then timed
           as the mean over the 16 mini-batch positions inside one CUDA graph (bench.micro.time_calls).
  position the best configurations at positions 0, 8 and 15 alone (the update step's cost).
  batch    the best configuration per kernel at B = 64, 256, 1024.
  compiled torch.compile of the PyTorch dual step (mlp_2_dual_compiled) at B = 64, 512.
A compact table is printed last; every figure is a JSON line in --out.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback

import torch

T0 = time.time()
TABLE: list[str] = []


def log(msg):
    print(f"[{time.time() - T0:6.1f}s] {msg}", flush=True)


def emit(rec, args):
    rec = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), **args.meta, **rec}
    with open(args.out, "a") as fh:
        fh.write(json.dumps(rec) + "\n")
    return rec


def stage(name, fn, args, deadline=None):
    if deadline is not None and time.time() - T0 > deadline:
        log(f"skip {name}: past {deadline}s")
        TABLE.append(f"{name}: skipped (time)")
        return
    log(f"== {name}")
    try:
        fn(args)
    except Exception as e:  # noqa: BLE001 - record and go on
        traceback.print_exc()
        emit({"kind": "error", "stage": name, "error": f"{type(e).__name__}: {e}"[:2000]}, args)
        TABLE.append(f"{name}: ERROR {type(e).__name__}: {str(e)[:200]}")


# ---------------------------------------------------------------- configurations swept (run 1)
def _m2d(bf, w, r=None, early=False, reload=True, dot=True):
    return {"BLOCK_F": bf, "num_warps": w, "maxnreg": r, "EARLY": early, "RELOAD_W2": reload, "UPDATE_DOT": dot}


# Run 2: after run 1 (occupancy decided: 2-warp 64-column chunks and 4-warp whole tiles were best), the
# whole-tile variants load everything at once (EARLY), the chunked ones prefetch the next chunk.
M2_DUAL = [
    _m2d(256, 4, early=True), _m2d(256, 4, early=True, dot=False), _m2d(256, 4, early=True, reload=False, dot=False),
    _m2d(256, 4), _m2d(256, 8, early=True, dot=False), _m2d(256, 8, 128, early=True, dot=False),
    _m2d(128, 4), _m2d(64, 4), _m2d(64, 4, 168), _m2d(64, 2), _m2d(64, 2, dot=False), _m2d(64, 2, 128),
    _m2d(32, 4), _m2d(32, 4, 168), _m2d(32, 2), _m2d(32, 2, 128),
]
M2_PRIMAL = [
    {"BLOCK_F": 256, "num_warps": 8, "maxnreg": None, "EARLY": True},
    {"BLOCK_F": 256, "num_warps": 8, "maxnreg": None, "EARLY": False},
    {"BLOCK_F": 256, "num_warps": 16, "maxnreg": None, "EARLY": True},
    {"BLOCK_F": 256, "num_warps": 4, "maxnreg": None, "EARLY": False},
    {"BLOCK_F": 64, "num_warps": 4, "maxnreg": None, "EARLY": False},
    {"BLOCK_F": 32, "num_warps": 4, "maxnreg": None, "EARLY": False},
    {"BLOCK_F": 32, "num_warps": 4, "maxnreg": 168, "EARLY": False},
    {"BLOCK_F": 32, "num_warps": 2, "maxnreg": None, "EARLY": False},
    {"BLOCK_F": 32, "num_warps": 2, "maxnreg": 128, "EARLY": False},
]
M1_DUAL = [{"num_warps": w, "maxnreg": None, "UPDATE_DOT": d} for w in (1, 2, 4) for d in (True, False)]
M1_DUAL += [{"num_warps": 8, "maxnreg": None, "UPDATE_DOT": True}, {"num_warps": 2, "maxnreg": 128, "UPDATE_DOT": True},
            {"num_warps": 4, "maxnreg": 64, "UPDATE_DOT": True}]
M1_PRIMAL = [{"num_warps": w, "maxnreg": None} for w in (1, 2, 4, 8)] + [{"num_warps": 2, "maxnreg": 96}]
SWEEPS = {"mlp_2_dual_triton": M2_DUAL, "mlp_2_primal_triton": M2_PRIMAL, "mlp_1_dual_triton": M1_DUAL,
          "mlp_1_primal_triton": M1_PRIMAL}


def cfg_str(cfg):
    short = {"BLOCK_F": "BF", "num_warps": "w", "maxnreg": "r", "EARLY": "e", "RELOAD_W2": "rl", "UPDATE_DOT": "dot"}
    return " ".join(f"{short.get(k, k)}{int(v) if isinstance(v, bool) else v}" for k, v in cfg.items() if v is not None)


# ---------------------------------------------------------------- stages
def st_env(args):
    import triton

    from ttt_decode.bench.micro import copy_bandwidth, gpu_name

    info = {"torch": torch.__version__, "triton": triton.__version__, "cuda": torch.version.cuda,
            "gpu": gpu_name(args.device)}
    if args.device.type == "cuda":
        p = torch.cuda.get_device_properties(args.device)
        info.update(sms=p.multi_processor_count, mem_gb=round(p.total_memory / 2 ** 30, 1))
    args.meta["gpu"] = info["gpu"]
    copy = copy_bandwidth(args.device)
    args.copy = copy["gb_per_s"]
    emit({"kind": "env", **info, "copy_gb_per_s": round(copy["gb_per_s"], 1), "copy_ways": copy["ways"]}, args)
    TABLE.append(f"env: {info['gpu']} torch {info['torch']} triton {info['triton']}; copy {args.copy:.0f} GB/s "
                 f"{copy['ways']}")


def _f128_model():
    import ttt_decode.configs as configs

    name = "ttt-f128-probe"
    if name not in configs.CONFIGS:
        configs.CONFIGS[name] = configs.TTTConfig(name, hidden_size=1024, num_layers=1, num_heads=8,
                                                  intermediate_size=256, vocab_size=500)
    return name


def st_check(args):
    from ttt_decode.bench.micro import check_ttt_variant

    dts = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
    cases = [(k, sd, args.model, args.check_batch) for k in SWEEPS for sd in dts]
    cases += [(k, "float16", _f128_model() if not args.smoke else args.model, args.check_batch) for k in SWEEPS]
    for kernel, sd, model, B in cases:
        act = dts[sd] if sd != "float16" else torch.float16
        res = check_ttt_variant(kernel, dts[sd], args.device, model, act, batch=B)
        emit({"kind": "kernel_check", "kernel": kernel, "model": model, "state_dtype": sd, "dtype": str(act)[6:],
              **res}, args)
        TABLE.append(f"check {kernel:20s} {model:14s} {sd:8s} B={B}: {'PASS' if res['passed'] else 'FAIL'} "
                     + " ".join(f"{k} {v[0]:.1e}/{v[1]:.1e}" for k, v in res["errors"].items()))


def _time_cfg(args, kernel, cfg, batch, positions=None):
    from ttt_decode.bench.micro import time_calls, ttt_micro_case

    fns, nbytes, flops, n_sets = ttt_micro_case(kernel, batch, torch.float16, args.device, args.model, torch.float16,
                                                config=cfg)
    if positions is not None:
        b = len(fns) // n_sets
        fns = [fns[p] for p in positions for _ in range(b // len(positions))]
    t = time_calls(fns, args.device, args.replays)
    del fns
    if args.device.type == "cuda":
        torch.cuda.empty_cache()
    return t, nbytes, flops, n_sets


def _record(args, kernel, cfg, batch, t, nbytes, flops, n_sets, stage_name, extra=None):
    gbs = nbytes / t["us"] / 1e3
    rec = emit({"kind": "micro_sweep", "stage": stage_name, "kernel": kernel, "model": args.model, "state_dtype": "float16",
                "batch": batch, "config": cfg, "us_per_layer": round(t["us"], 2), "us_p10": round(t["p10"], 2),
                "us_p90": round(t["p90"], 2), "bytes": nbytes, "gb_per_s": round(gbs, 1),
                "pct_copy_bw": round(100 * gbs / args.copy, 1), "copy_gb_per_s": round(args.copy, 1),
                "state_sets": n_sets, **(extra or {})}, args)
    return rec


def st_sweep(args):
    from ttt_decode.bench.micro import check_ttt_variant

    B = args.sweep_batch
    # Each kernel gets its own deadline, so a slow sweep cannot starve the next kernel.
    ends = dict(zip(SWEEPS, (0.30, 0.40, 0.48, 0.55)))
    for kernel, cfgs in SWEEPS.items():
        results = []
        for cfg in cfgs:
            if time.time() - T0 > args.budget * ends[kernel]:
                log(f"sweep {kernel}: time is up")
                break
            try:
                chk = check_ttt_variant(kernel, torch.float16, args.device, args.model, torch.float16, batch=3,
                                        config=cfg)
                if not chk["passed"]:
                    emit({"kind": "sweep_check_failed", "kernel": kernel, "config": cfg, **chk}, args)
                    TABLE.append(f"sweep {kernel} {cfg_str(cfg)}: CHECK FAILED {chk['errors']}")
                    continue
                t, nbytes, flops, n_sets = _time_cfg(args, kernel, cfg, B)
            except Exception as e:  # noqa: BLE001 - a config that does not compile is recorded, not fatal
                emit({"kind": "sweep_error", "kernel": kernel, "config": cfg, "error": f"{type(e).__name__}: {e}"[:500]},
                     args)
                TABLE.append(f"sweep {kernel} {cfg_str(cfg)}: ERROR {type(e).__name__}: {str(e)[:120]}")
                continue
            rec = _record(args, kernel, cfg, B, t, nbytes, flops, n_sets, "sweep", {"check": chk})
            results.append(rec)
            log(f"{kernel} {cfg_str(cfg)}: {t['us']:.1f} us {rec['pct_copy_bw']:.1f}%")
        results.sort(key=lambda r: r["us_per_layer"])
        args.best[kernel] = [r["config"] for r in results[:2]]
        for r in results:
            TABLE.append(f"sweep {kernel:20s} B={B} {cfg_str(r['config']):38s} {r['us_per_layer']:9.1f} us "
                         f"{r['gb_per_s']:7.0f} GB/s {r['pct_copy_bw']:5.1f}%")


def st_position(args):
    B = args.sweep_batch
    for kernel in ("mlp_2_dual_triton", "mlp_1_dual_triton", "mlp_2_primal_triton"):
        for cfg in args.best.get(kernel, [])[:2]:
            for p in (0, 8, 15):
                t, nbytes, flops, n_sets = _time_cfg(args, kernel, cfg, B, positions=[p])
                rec = _record(args, kernel, cfg, B, t, nbytes, flops, n_sets, "position", {"position": p})
                TABLE.append(f"pos {p:2d} {kernel:20s} B={B} {cfg_str(cfg):38s} {t['us']:9.1f} us "
                             f"(mean-cost bytes: {rec['pct_copy_bw']:5.1f}%)")


def st_batch(args):
    for kernel in SWEEPS:
      for cfg in (args.best.get(kernel) or [])[:2 if "dual" in kernel else 1]:
        for B in args.batches:
            if time.time() - T0 > args.deadline_batch:
                return
            t, nbytes, flops, n_sets = _time_cfg(args, kernel, cfg, B)
            rec = _record(args, kernel, cfg, B, t, nbytes, flops, n_sets, "batch")
            TABLE.append(f"batch {kernel:20s} B={B:5d} {cfg_str(cfg):38s} {t['us']:9.1f} us {rec['gb_per_s']:7.0f} GB/s "
                         f"{rec['pct_copy_bw']:5.1f}%")


def st_compiled(args):
    from ttt_decode.bench.micro import check_ttt_variant, time_calls, ttt_micro_case

    kernel = "mlp_2_dual_compiled"
    t0 = time.time()
    chk = check_ttt_variant(kernel, torch.float16, args.device, args.model, torch.float16, batch=3)
    TABLE.append(f"check {kernel}: {'PASS' if chk['passed'] else 'FAIL'} {chk['errors']} ({time.time() - t0:.0f}s with compile)")
    for B in args.compiled_batches:
        fns, nbytes, flops, n_sets = ttt_micro_case(kernel, B, torch.float16, args.device, args.model, torch.float16)
        t = time_calls(fns, args.device, args.replays)
        del fns
        rec = _record(args, kernel, None, B, t, nbytes, flops, n_sets, "compiled")
        TABLE.append(f"compiled {kernel} B={B}: {t['us']:9.1f} us {rec['pct_copy_bw']:5.1f}%")


def st_ncu(args):
    import shutil
    import subprocess

    ncu = shutil.which("ncu") or next(iter(sorted(__import__("glob").glob("/opt/nvidia/nsight-compute/*/ncu"))), None)
    if ncu is None or args.smoke:
        TABLE.append("ncu: not found" if ncu is None else "ncu: skipped (smoke)")
        return
    for kernel, regex in (("mlp_2_dual_triton", "_m2_dual_kernel"), ("mlp_1_dual_triton", "_m1_dual_kernel")):
        cfg = (args.best.get(kernel) or [None])[0]
        if cfg is None:
            continue
        cmd = [ncu, "-k", f"regex:{regex}", "--launch-skip", "16", "--launch-count", "2", "--section", "SpeedOfLight",
               "--section", "Occupancy", "--section", "LaunchStats", "--section", "WarpStateStats",
               "--section", "SchedulerStats", sys.executable, "exp/gpu/ncu_one.py", "--kernel", kernel,
               "--config", json.dumps(cfg)]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": "src"})
        text = res.stdout[-12000:]
        with open(os.path.join(os.path.dirname(args.out), f"ncu_{kernel}.txt"), "w") as fh:
            fh.write(" ".join(cmd) + "\n" + res.stdout + res.stderr[-3000:])
        keep = [l.strip() for l in text.splitlines() if any(k in l for k in (
            "DRAM Throughput", "Memory Throughput", "Compute (SM) Throughput", "Achieved Occupancy",
            "Theoretical Occupancy", "Registers Per Thread", "Issue Slots Busy", "No Eligible", "Warp Cycles Per Issued",
            "Block Limit Registers", "Duration", "Eligible Warps"))]
        TABLE.append(f"ncu {kernel} {cfg_str(cfg)}: " + " | ".join(keep[:30]))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", default=os.path.join(os.environ.get("OUT", "/tmp"), "kernels.jsonl"))
    p.add_argument("--run", default="1")
    p.add_argument("--commit", default="unknown")
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--stages", default="env,sweep,position,batch,ncu,compiled")
    p.add_argument("--budget", type=float, default=330.0, help="seconds for the whole script")
    args = p.parse_args()
    args.smoke = args.smoke or not torch.cuda.is_available()
    args.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    args.model = "ttt-tiny" if args.smoke else "ttt-1b"
    args.check_batch = 2 if args.smoke else 16
    args.sweep_batch = 2 if args.smoke else 512
    args.batches = [3] if args.smoke else [16, 64, 256, 1024]
    args.compiled_batches = [2] if args.smoke else [64, 512]
    args.replays = 2 if args.smoke else 20
    args.deadline_sweep = args.budget * 0.55
    args.deadline_batch = args.budget * 0.74
    args.best = {}
    args.copy = float("nan")
    if args.smoke:
        global SWEEPS
        SWEEPS = {k: v[:2] for k, v in SWEEPS.items()}
    args.meta = {"run": args.run, "commit": args.commit,
                 "command": "PYTHONPATH=src python3 " + " ".join(sys.argv)}
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    fns = {"env": (st_env, None), "check": (st_check, args.budget * 0.25), "sweep": (st_sweep, args.budget * 0.5),
           "position": (st_position, args.budget * 0.62), "batch": (st_batch, args.budget * 0.7),
           "ncu": (st_ncu, args.budget * 0.82), "compiled": (st_compiled, args.budget * 0.86)}
    for name in args.stages.split(","):
        fn, deadline = fns[name]
        stage(name, fn, args, deadline)
    print("\n".join(TABLE), flush=True)


if __name__ == "__main__":
    main()
