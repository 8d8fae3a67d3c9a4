"""`ttt-decode micro` / `python -m ttt_decode.bench.micro`: per-layer time of the decode kernels (DESIGN section 8).

Built on triton.testing.perf_report: one Benchmark over batch sizes (x) and kernel variants (lines),
the y axis the achieved GB/s on each variant's compulsory bytes, with the measured copy bandwidth
drawn as its own line. Per cell:

1. correctness first: every variant is checked against the float64 PyTorch reference (two
   mini-batches plus one token, every position including the state update) before anything is
   timed; a variant that fails is not timed and the command exits 1;
2. inputs: random (never zeros) q, k, v, eta, state and cache rows at the model's layer shapes,
   activations in --dtype, state and cache in --state-dtype; enough copies of the state ("sets") that
   their total is at least 4x the L2 cache, so every call reads its state from HBM;
3. timing: one call per mini-batch position (0..b-1, the end-of-mini-batch update included) per
   set, all captured in one CUDA graph and replayed; us_per_layer = replay time / calls (median of
   the replays, also p10/p90). Nothing compiles or captures inside the timed replays.
4. compulsory bytes: ops.ttt_common.inner_step_cost (averaged over the mini-batch positions) times
   the batch; GB/s = bytes / time; pct_copy_bw against the copy bandwidth measured in the same run
   (a 1 GiB device-to-device copy timed three ways, bytes read + written, the best kept).

Kernels (--kernels): mlp_{1,2}_{dual,primal}_triton (the Triton kernels), mlp_{1,2}_{dual,primal}_compiled
(torch.compile of the PyTorch reference step), and mamba_step_triton / mamba_step_ref through
ttt_decode.bench.mamba_micro.micro_case (the Mamba-1 decode step at --mamba-model's shapes).

DESIGN sections 11, 12.3 and 13.3: the bytes and GB/s, the record fields, the method.

Output: a table printed last, a PNG and CSV (perf_report's), and one JSON line per kernel x batch
appended to exp/results/<gpu>/micro.jsonl (--out). --profile wraps each variant's replays in an NVTX
range for `nsys profile`. On CPU (--device cpu) the Triton kernels run in the interpreter
(TRITON_INTERPRET=1) and times come from the wall clock: for checking the tool, not for numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

from ttt_decode import registry
from ttt_decode.dtypes import parse_dtype
from ttt_decode.errors import UserError
from ttt_decode.ops.cuda_graphs import capture_graph
from ttt_decode.ops.ttt_mlp import naive as m2_naive
from ttt_decode.provenance import git_commit, gpu_name
from ttt_decode.provenance import gpu_slug as gpu_folder

# The variants `--kernels` takes (registry): the TTT Triton kernels and torch.compile of the references,
# and the Mamba step; kernel -> (M2?, form, "triton" | "compiled").
TTT_KERNELS = {i.name: (i.part == "ttt_mlp", i.form, i.impl) for i in registry.IMPLEMENTATIONS.values()
               if i.family == "ttt" and i.impl in (registry.TRITON, registry.COMPILED)}
MAMBA_KERNELS = tuple(n for n, i in registry.IMPLEMENTATIONS.items() if i.part == "mamba_step" and not i.selectable)
DEFAULT_KERNELS = "mlp_2_dual_triton,mlp_2_primal_triton,mlp_2_dual_compiled,mlp_1_dual_triton,mlp_1_primal_triton"
DEFAULT_BATCHES = "16,32,64,128,256,512,1024"
L2_ROTATIONS = 4  # state sets rotated until one pass over them touches 4x the GPU's L2
MAX_SETS = 8
# The state and activation dtypes the kernels take.
DTYPES = ("float16", "bfloat16", "float32")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kernels", default=DEFAULT_KERNELS,
                   help=f"comma-separated variants: {', '.join(TTT_KERNELS)}, {', '.join(MAMBA_KERNELS)} "
                        f"(default {DEFAULT_KERNELS})")
    p.add_argument("--batch", default=DEFAULT_BATCHES, help=f"comma-separated batch sizes (default {DEFAULT_BATCHES})")
    p.add_argument("--model", default="ttt-1b", help="TTT config whose layer shapes are used (default ttt-1b)")
    p.add_argument("--mamba-model", default="mamba-1.4b", help="Mamba config for mamba_* kernels (default mamba-1.4b)")
    p.add_argument("--state-dtype", "--state_dtype", dest="state_dtype", default="float16",
                   help="state and cache dtype: float16, bfloat16, float32 (default float16)")
    p.add_argument("--dtype", default="float16", help="activation dtype: float16, bfloat16, float32 (default float16)")
    p.add_argument("--device", type=_device_arg, default=None, help="cuda, cuda:N or cpu (default: cuda if available)")
    p.add_argument("--out", default=None, help="JSON-lines file to append to (default exp/results/<gpu>/micro.jsonl)")
    p.add_argument("--plot-dir", default=None, help="where the PNG and CSV go (default: the --out folder)")
    p.add_argument("--replays", type=int, default=20, help="timed graph replays per cell (default 20)")
    p.add_argument("--profile", action="store_true", help="NVTX range around each variant's runs (for nsys profile)")
    p.add_argument("--commit", default=None, help="commit recorded in the results (default: git rev-parse)")
    p.add_argument("--seed", type=int, default=0)


def _device_arg(text: str) -> str:
    from ttt_decode.cli_args import device_arg

    return device_arg(text)


def _check_model_kinds(kernels: list[str], model: str, mamba_model: str) -> None:
    """--model must name a TTT config for the mlp_* kernels, --mamba-model a Mamba one for mamba_*."""
    from ttt_decode.configs import MambaConfig, TTTConfig, get_config

    if any(k in TTT_KERNELS for k in kernels) and not isinstance(get_config(model), TTTConfig):
        raise UserError(f"--model {model} is not a TTT config, but the mlp_* kernels take their shapes from one: "
                        "pass --model ttt-1b (or ttt-tiny), and --mamba-model for the mamba_* kernels")
    if any(k in MAMBA_KERNELS for k in kernels) and not isinstance(get_config(mamba_model), MambaConfig):
        raise UserError(f"--mamba-model {mamba_model} is not a Mamba config, but the mamba_* kernels take their "
                        "shapes from one: pass --mamba-model mamba-1.4b (or mamba-tiny)")


# ---------------------------------------------------------------- environment
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def state_sets(device, nbytes: int) -> int:
    """How many copies of a cell's state to rotate so that each call reads its state from HBM:
    enough that one pass over them is L2_ROTATIONS x the device's L2 (read off the device)."""
    device = torch.device(device)
    if device.type != "cuda":
        return 1
    l2 = getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 50 * 2 ** 20)
    return max(1, min(MAX_SETS, -(-L2_ROTATIONS * l2 // max(nbytes, 1))))


# ---------------------------------------------------------------- timing
def time_calls(fns, device: torch.device, replays: int = 20, nvtx: str | None = None) -> dict:
    """us per call of the callables fns, run in order: one CUDA graph of all of them, replayed.

    Warm-up (compilation, autotuning, allocation) happens before the capture. Returns median, p10,
    p90 over the replays (each replay's time / len(fns)). On CPU: wall clock of one pass."""
    for fn in fns:
        fn()
    sync(device)
    if device.type != "cuda":
        t0 = time.perf_counter()
        for fn in fns:
            fn()
        us = (time.perf_counter() - t0) * 1e6 / len(fns)
        return {"us": us, "p10": us, "p90": us, "replays": 1}
    def all_calls():
        for fn in fns:
            fn()

    graph, _ = capture_graph(all_calls, all_calls)
    graph.replay()
    torch.cuda.synchronize(device)
    times = []
    if nvtx:
        torch.cuda.nvtx.range_push(nvtx)
    for _ in range(replays):
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        graph.replay()
        e1.record()
        e1.synchronize()
        times.append(e0.elapsed_time(e1) * 1e3 / len(fns))
    if nvtx:
        torch.cuda.nvtx.range_pop()
    del graph
    times.sort()
    return {"us": statistics.median(times), "p10": times[len(times) // 10], "p90": times[(9 * len(times)) // 10],
            "replays": replays}


def copy_bandwidth(device: torch.device) -> dict:
    """Device-to-device copy bandwidth in GB/s (bytes read + written), the best of three ways."""
    n = (1 << 30) if device.type == "cuda" else (1 << 24)
    src = torch.randn(n // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    ways = {"elementwise_kernel_in_graph": time_calls([lambda: torch.mul(src, 1.0, out=dst)], device, 10)["us"],
            "memcpy_in_graph": time_calls([lambda: dst.copy_(src)], device, 10)["us"]}
    if device.type == "cuda":
        times = []
        for _ in range(10):
            e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            e0.record()
            dst.copy_(src)
            e1.record()
            e1.synchronize()
            times.append(e0.elapsed_time(e1) * 1e3)
        ways["memcpy_eager"] = statistics.median(times)
    gbs = {k: 2 * n / us / 1e3 for k, us in ways.items()}
    src = dst = None  # 2 GiB freed before returning
    return {"gb_per_s": max(gbs.values()), "ways": {k: round(v, 1) for k, v in gbs.items()}}


# ---------------------------------------------------------------- TTT cases
def _step_fn(mlp: bool, form: str, impl: str):
    """The decode step of a variant, taking tensors only (so torch.compile sees no dataclasses)."""
    from ttt_decode.ops.ttt_common import DualCache, PrimalCache, TTTState, pick_step

    op = "ttt_decode.ops.ttt_mlp" if mlp else "ttt_decode.ops.ttt_linear"
    step = pick_step(op, "naive" if impl == "compiled" else impl, form == "dual")

    def run(q, k, v, eta, c, gamma, beta, pos, *tensors):
        n = 4 if mlp else 2
        state = TTTState(*tensors[:n])
        if form == "dual":
            cache = DualCache(pos, *tensors[n:])
        else:
            cache = PrimalCache(pos, *tensors[n:], mini_batch_size=c.shape[0])
        return step(q, k, v, eta, c, gamma, beta, state, cache, advance=False)

    if impl == "compiled":
        # dynamic=True: one compilation serves every batch size (the cold start stays out of the timing).
        return torch.compile(run, fullgraph=True, dynamic=True)
    return run


def ttt_case(mlp: bool, form: str, batch: int, heads: int, head_dim: int, mini_batch: int, act_dtype, state_dtype,
             device, seed: int = 0) -> dict:
    """Random inputs of one layer's decode step: activations, state and a full cache (rows random)."""
    from ttt_decode.ops.ttt_common import token_coeffs

    device = torch.device(device)
    # Drawn on the device: a CPU generator would spend seconds on a B = 1024 state.
    g = torch.Generator(device=device).manual_seed(seed)
    f, b = head_dim, mini_batch
    F = 4 * f if mlp else f

    def r(*shape, scale=1.0, dtype=act_dtype):
        return (torch.randn(*shape, generator=g, device=device, dtype=torch.float32) * scale).to(dtype)

    B, H = batch, heads
    state = [r(B, H, f, F, scale=f ** -0.5, dtype=state_dtype), r(B, H, F, scale=0.1, dtype=state_dtype)]
    if mlp:
        state += [r(B, H, F, f, scale=F ** -0.5, dtype=state_dtype), r(B, H, f, scale=0.1, dtype=state_dtype)]
    if form == "dual":
        # Cache rows as the kernel writes them: k, eta g1 (, X2, eta g2).
        cache = [r(B, H, b, f, dtype=state_dtype), r(B, H, b, F, scale=0.01, dtype=state_dtype)]
        if mlp:
            cache += [r(B, H, b, F, scale=0.5, dtype=state_dtype), r(B, H, b, f, scale=0.01, dtype=state_dtype)]
    else:
        cache = [r(*t.shape, scale=0.01, dtype=state_dtype) for t in state]
    eta = (torch.rand(B, H, generator=g, device=device) * 0.5 + 0.01) / f
    c = token_coeffs(r(b, scale=0.05))
    return {"q": r(B, H, f), "k": r(B, H, f), "v": r(B, H, f), "eta": eta, "c": c,
            "gamma": (1.0 + r(H, f, scale=0.1)).contiguous(), "beta": r(H, f, scale=0.1), "state": state,
            "cache": cache}


def ttt_cost(mlp: bool, form: str, cfg, batch: int, state_dtype, act_dtype) -> dict:
    from ttt_decode.ops.ttt_common import inner_step_cost

    s_item = torch.empty((), dtype=state_dtype).element_size()
    a_item = torch.empty((), dtype=act_dtype).element_size()
    cost = inner_step_cost(mlp, form, cfg.num_heads, cfg.head_dim, cfg.mini_batch_size, s_item, a_item)
    return {"bytes": batch * cost["bytes"], "flops": batch * cost["flops"], "state_bytes": batch * cost["state_bytes"]}


def ttt_micro_case(kernel: str, batch: int, state_dtype, device, model: str = "ttt-1b", act_dtype=torch.float16,
                   seed: int = 0, config: dict | None = None):
    """(fns, bytes, flops): fns are one call per (state set, mini-batch position), to be run in order.

    config: a launch configuration for the Triton kernels (the sweep in exp/gpu uses it); None = the
    kernel's own hand-picked configuration."""
    from ttt_decode.configs import TTTConfig, get_config

    mlp, form, impl = TTT_KERNELS[kernel]
    cfg = get_config(model)
    if not isinstance(cfg, TTTConfig):
        raise UserError(f"kernel {kernel!r} needs a TTT model's shapes; {model!r} is not one (try --model ttt-1b)")
    step = _step_fn(mlp, form, impl) if config is None else _configured_step(mlp, form, config)
    cost = ttt_cost(mlp, form, cfg, batch, state_dtype, act_dtype)
    # Rotate state sets until the bytes one pass touches exceed 4x the L2 cache.
    n_sets = state_sets(device, cost["bytes"])
    b = cfg.mini_batch_size
    fns = []
    for i in range(n_sets):
        case = ttt_case(mlp, form, batch, cfg.num_heads, cfg.head_dim, b, act_dtype, state_dtype, device, seed + i)
        for p in range(b):
            pos = torch.full((1,), p, dtype=torch.int64, device=device)
            args = (case["q"], case["k"], case["v"], case["eta"], case["c"], case["gamma"], case["beta"], pos,
                    *case["state"], *case["cache"])
            fns.append(lambda args=args: step(*args))
    return fns, cost["bytes"], cost["flops"], n_sets


def _configured_step(mlp: bool, form: str, config: dict):
    """A Triton step with an explicit launch configuration (tensors only, like _step_fn)."""
    import importlib

    pkg = "ttt_decode.ops.ttt_mlp" if mlp else "ttt_decode.ops.ttt_linear"
    mod = importlib.import_module(f"{pkg}.{'triton_decode' if form == 'dual' else 'triton_primal'}")

    def run(q, k, v, eta, c, gamma, beta, pos, *tensors):
        out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
        if form == "dual":
            return mod.launch(q, k, v, eta, c, gamma, beta, pos, *tensors, out, config=config)
        return mod.launch(q, k, v, eta, c, gamma, beta, pos, *tensors, out, config=config)

    return run


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


def check_ttt_variant(kernel: str, state_dtype, device, model: str = "ttt-1b", act_dtype=torch.float16, batch: int = 3,
                      seed: int = 1234, config: dict | None = None) -> dict:
    """The variant vs the float64 reference (and the PyTorch op in the same dtypes) over 2 mini-batches + 1 token.

    Passes when the variant's error on the outputs and on the final state is at most 2x the PyTorch
    op's in the same dtypes plus 1e-6 (float32 state: under 1e-5), and under 2e-2."""
    from ttt_decode.configs import get_config

    mlp, form, impl = TTT_KERNELS[kernel]
    cfg = get_config(model)
    b, f, H = cfg.mini_batch_size, cfg.head_dim, cfg.num_heads
    n_tok = 2 * b + 1
    step = _step_fn(mlp, form, impl) if config is None else _configured_step(mlp, form, config)
    ref_step = _step_fn(mlp, form, "naive")
    g = torch.Generator(device="cpu").manual_seed(seed)
    toks = [{n: (torch.randn(batch, H, f, generator=g)).to(device=device, dtype=act_dtype) for n in "qkv"}
            for _ in range(n_tok)]
    etas = [((torch.rand(batch, H, generator=g) * 0.5 + 0.01) / f).to(device) for _ in range(n_tok)]
    base = ttt_case(mlp, form, batch, H, f, b, act_dtype, state_dtype, device, seed)
    # The cache starts empty, as after a prefill that ended on a mini-batch boundary.
    for t in base["cache"]:
        t.zero_()

    def run(fn, dtype):
        conv = (lambda t: t.to(torch.float64)) if dtype == torch.float64 else (lambda t: t.clone())
        tensors = [conv(t) for t in base["state"] + base["cache"]]
        pos = torch.zeros(1, dtype=torch.int64, device=device)
        outs = []
        for t in range(n_tok):
            a = [conv(toks[t][n]) for n in "qkv"] + [conv(etas[t]), conv(base["c"]), conv(base["gamma"]),
                                                       conv(base["beta"])]
            outs.append(fn(*a, pos, *tensors).clone())
            pos.copy_((pos + 1) % b)
        return torch.stack(outs), tensors

    out64, t64 = run(ref_step, torch.float64)
    out_same, t_same = run(ref_step, None)
    out, t_k = run(step, None)
    n_state = 4 if mlp else 2
    errs = {"out": (rel_err(out, out64), rel_err(out_same, out64))}
    for i in range(n_state):
        errs[f"state{i}"] = (rel_err(t_k[i], t64[i]), rel_err(t_same[i], t64[i]))
    fp32 = state_dtype == torch.float32 and act_dtype == torch.float32
    ok = bool(torch.isfinite(out).all())
    for e, e_ref in errs.values():
        ok &= (e < 1e-5) if fp32 else (e <= 2 * e_ref + 1e-6 and e < 2e-2)
    return {"passed": bool(ok), "errors": {k: [float(f"{e:.3e}"), float(f"{r:.3e}")] for k, (e, r) in errs.items()},
            "check_batch": batch, "check_tokens": n_tok}


# ---------------------------------------------------------------- Mamba cases
def _mamba_spec():
    try:
        from ttt_decode.bench import mamba_micro as bench_spec
    except ImportError as e:
        raise UserError(f"mamba_* kernels need ttt_decode.bench.mamba_micro, which cannot be imported ({e}); "
                        "leave them out of --kernels") from None
    return bench_spec


def check_mamba_variant(kernel: str, state_dtype, device, model: str) -> dict:
    """mamba_step_triton vs mamba_step_ref on the same seeded inputs (mamba_micro makes them identical)."""
    spec = _mamba_spec()
    outs = {}
    for k in (kernel, "mamba_step_ref"):
        fn, _, _ = spec.micro_case(k, 5, state_dtype, device, model)
        outs[k] = fn().clone()
    e = rel_err(outs[kernel], outs["mamba_step_ref"])
    return {"passed": bool(e < 1e-2 and torch.isfinite(outs[kernel]).all()),
            "errors": {"out_vs_mamba_step_ref": e}, "check_batch": 5}


def mamba_micro_case(kernel: str, batch: int, state_dtype, device, model: str):
    spec = _mamba_spec()
    fn, nbytes, flops = spec.micro_case(kernel, batch, state_dtype, device, model)
    n_sets = state_sets(device, nbytes)
    fns = [fn] + [spec.micro_case(kernel, batch, state_dtype, device, model)[0] for _ in range(n_sets - 1)]
    return fns, nbytes, flops, n_sets


# ---------------------------------------------------------------- the benchmark
def run_micro(kernels: list[str], batches: list[int], model: str, mamba_model: str, state_dtype, act_dtype, device,
              out_path: str, plot_dir: str, replays: int, profile: bool, commit: str, command: str,
              seed: int = 0) -> tuple[list[dict], bool]:
    import triton
    import triton.testing

    name = gpu_name(device)
    meta = {"kind": "micro", "commit": commit, "gpu": name, "device": str(device), "torch": torch.__version__,
            "triton": triton.__version__, "cuda": torch.version.cuda, "state_dtype": str(state_dtype)[6:],
            "dtype": str(act_dtype)[6:], "command": command,
            # TTT-MLP dual's cache convention (DESIGN section 9.8): which mlp_2_dual kernel the records time
            "m2_defer_w1": m2_naive.DEFER_W1}
    copy = copy_bandwidth(device)
    print(f"copy bandwidth {copy['gb_per_s']:.0f} GB/s {copy['ways']}", flush=True)

    checks, all_ok = {}, True
    for k in kernels:
        if k in MAMBA_KERNELS:
            checks[k] = check_mamba_variant(k, state_dtype, device, mamba_model)
        else:
            checks[k] = check_ttt_variant(k, state_dtype, device, model, act_dtype)
        all_ok &= checks[k]["passed"]
        print(f"check {k:24s} {'PASS' if checks[k]['passed'] else 'FAIL'} {checks[k]['errors']}", flush=True)

    records = []
    line_vals = [k for k in kernels if checks[k]["passed"]] + ["copy"]
    bench = triton.testing.Benchmark(
        x_names=["batch"], x_vals=batches, line_arg="kernel", line_vals=line_vals,
        line_names=[k if k != "copy" else "copy bandwidth (measured)" for k in line_vals],
        ylabel="GB/s", xlabel="batch", x_log=True,
        plot_name=f"micro_{model}_{meta['state_dtype']}", args={})

    @triton.testing.perf_report(bench)
    def cell(batch, kernel):
        if kernel == "copy":
            return copy["gb_per_s"]
        if kernel in MAMBA_KERNELS:
            fns, nbytes, flops, n_sets = mamba_micro_case(kernel, batch, state_dtype, device, mamba_model)
            shapes = mamba_model
        else:
            fns, nbytes, flops, n_sets = ttt_micro_case(kernel, batch, state_dtype, device, model, act_dtype, seed)
            shapes = model
        t = time_calls(fns, device, replays, nvtx=f"{kernel} B={batch}" if profile else None)
        del fns
        if device.type == "cuda":
            torch.cuda.empty_cache()
        gbs = nbytes / t["us"] / 1e3
        rec = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), **meta, "kernel": kernel, "model": shapes, "batch": batch,
               "us_per_layer": round(t["us"], 2), "us_p10": round(t["p10"], 2), "us_p90": round(t["p90"], 2),
               "replays": t["replays"], "state_sets": n_sets, "bytes": int(nbytes), "flops": int(flops),
               "gb_per_s": _sig(gbs), "copy_gb_per_s": round(copy["gb_per_s"], 1),
               "copy_ways": copy["ways"], "pct_copy_bw": _sig(100 * gbs / copy["gb_per_s"]),
               "tflop_per_s": round(flops / t["us"] / 1e6, 2), "check": checks[kernel]}
        records.append(rec)
        with open(out_path, "a") as fh:
            fh.write(json.dumps(rec) + "\n")
        print(f"  {kernel:24s} B={batch:5d} {t['us']:10.2f} us {gbs:8.1f} GB/s {rec['pct_copy_bw']:5.1f}% copy",
              flush=True)
        return gbs

    os.makedirs(plot_dir, exist_ok=True)
    cell.run(save_path=plot_dir, print_data=False, show_plots=False)
    failed = [{"time": time.strftime("%Y-%m-%dT%H:%M:%S"), **meta, "kernel": k, "model": model,
               "status": "check_failed",
               "check": checks[k]} for k in kernels if not checks[k]["passed"]]
    for rec in failed:
        with open(out_path, "a") as fh:
            fh.write(json.dumps(rec) + "\n")
    return records, all_ok


def _sig(x: float) -> float:
    """Four significant digits (CPU runs give tiny GB/s that rounding to 0.1 would erase)."""
    return float(f"{x:.4g}")


def format_table(records: list[dict], copy_gbs: float | None = None) -> str:
    if not records:
        return "(no timings)"
    kernels = list(dict.fromkeys(r["kernel"] for r in records))
    batches = sorted({r["batch"] for r in records})
    by = {(r["kernel"], r["batch"]): r for r in records}
    head = f"{'kernel':24s}" + "".join(f"{'B=' + str(b):>22s}" for b in batches)
    lines = [f"us per layer call / GB/s / % of copy bandwidth ({records[0]['copy_gb_per_s']:.0f} GB/s), "
             f"state {records[0]['state_dtype']}, {records[0]['gpu']}", head]
    for k in kernels:
        cells = []
        for b in batches:
            r = by.get((k, b))
            cell = f"{r['us_per_layer']:>8.1f} {r['gb_per_s']:>6.0f} {r['pct_copy_bw']:>4.0f}%" if r else f"{'-':>22s}"
            cells.append(cell)
        lines.append(f"{k:24s}" + "".join(f"{c:>22s}" for c in cells))
    return "\n".join(lines)


def _parse_list(text: str, name: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise UserError(f"--{name} is empty; give a comma-separated list")
    return items


def main(args) -> int:
    kernels = _parse_list(args.kernels, "kernels")
    unknown = [k for k in kernels if k not in TTT_KERNELS and k not in MAMBA_KERNELS]
    if unknown:
        raise UserError(f"unknown kernel(s) {', '.join(unknown)}; choose from {', '.join(TTT_KERNELS)}, "
                        f"{', '.join(MAMBA_KERNELS)}")
    try:
        batches = [int(b) for b in _parse_list(args.batch, "batch")]
    except ValueError:
        raise UserError(f"--batch must be comma-separated positive integers, got {args.batch!r}") from None
    if any(b < 1 for b in batches):
        raise UserError(f"--batch must be positive integers, got {args.batch!r}")
    for flag, value in (("--state-dtype", args.state_dtype), ("--dtype", args.dtype)):
        if value not in DTYPES:
            raise UserError(f"{flag} {value!r} is not supported; choose one of {', '.join(DTYPES)}")
    _check_model_kinds(kernels, args.model, args.mamba_model)
    if any(k in MAMBA_KERNELS for k in kernels):
        _mamba_spec()
    for pkg in ("pandas", "matplotlib"):  # triton.testing.perf_report's table and plot
        try:
            __import__(pkg)
        except ImportError:
            raise UserError(f"micro needs {pkg} for its table and plot: pip install {pkg} "
                            "(or pip install -e '.[plot]')") from None
    from ttt_decode.dtypes import resolve_device
    from ttt_decode.models.common import triton_interpreter_on

    device = resolve_device(args.device)
    if device.type == "cpu" and not triton_interpreter_on() and any(k.endswith("_triton") for k in kernels):
        raise UserError("Triton kernels on CPU need the interpreter: run with TRITON_INTERPRET=1 set in the "
                        "environment")
    name = gpu_name(device)
    out = args.out or os.path.join("exp", "results", gpu_folder(name), "micro.jsonl")
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    plot_dir = args.plot_dir or (os.path.dirname(out) or ".")
    from ttt_decode.provenance import command_line

    command = command_line()
    records, ok = run_micro(kernels, batches, args.model, args.mamba_model, parse_dtype(args.state_dtype),
                            parse_dtype(args.dtype), device, out, plot_dir, args.replays, args.profile,
                            args.commit or git_commit(), command, args.seed)
    print(f"records appended to {out}; plot {os.path.join(plot_dir, f'micro_{args.model}_{args.state_dtype}.png')}")
    print(format_table(records))
    if not ok:
        print("micro: a variant failed its correctness check and was not timed (see the check lines above)",
              file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m ttt_decode.bench.micro", description=__doc__.splitlines()[0])
    add_arguments(parser)
    try:
        sys.exit(main(parser.parse_args()))
    except UserError as e:
        print(f"micro: error: {e}", file=sys.stderr)
        sys.exit(2)
