"""Profiler traces of the decode step, with readable stage names (`--profile`, `ttt-decode profile`).

Two modes:
- eager (the seed's, `--no_cg`, the default of `ttt-decode profile`): a few decode steps run eagerly
  under torch.profiler with the models' stage ranges switched on (models.common.stage: "ttt.proj",
  "ttt.inner_loop", "mlp", "lm_head", "sampling", ...; NVTX ranges of the same names on CUDA for
  `nsys profile`); the step time is broken down by stage: device time of the kernels launched inside
  each range on CUDA, CPU time on CPU, per step; "other" is what no stage covers.
- compiled (`--use_compile` with CUDA graphs): the step as it runs in a benchmark, torch.compile'd and
  replayed from one CUDA graph. Stage ranges do not survive compilation, so the kernels the replays
  launch are grouped by what they are (`kernel_group`): the inner kernel (the one that carries the
  recurrent state: TTT inner loop, Mamba SSM step, decode attention), GEMMs, fused elementwise
  (inductor's Triton kernels and our hand-written ones: conv rings, norms), copies, other; with kernel
  launches per step.
Both write the trace as Chrome-trace JSON into the logdir (open it in ui.perfetto.dev) and the
breakdown as JSON and Markdown beside it.
"""

from __future__ import annotations

import json
import os
import time

import torch

from ttt_decode.models.common import STAGES, set_profiling


def _event_time_us(evt, on_cuda: bool) -> float:
    if on_cuda:
        for name in ("device_time_total", "cuda_time_total"):
            if hasattr(evt, name):
                return float(getattr(evt, name))
        return 0.0
    return float(evt.cpu_time_total)


def profile_session(session, steps: int, trace_path: str) -> dict:
    """Profile `steps` decode steps of an eager session; write the trace; return the breakdown."""
    device = session.model.device
    on_cuda = device.type == "cuda"
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if on_cuda else [])
    set_profiling(True)
    try:
        session.step()  # warm-up with ranges on
        if on_cuda:
            torch.cuda.synchronize(device)
        with torch.profiler.profile(activities=activities) as prof:
            t0 = time.perf_counter()
            for _ in range(steps):
                with torch.profiler.record_function("decode_step"):
                    session.step()
            if on_cuda:
                torch.cuda.synchronize(device)
            wall_ms = (time.perf_counter() - t0) * 1e3 / steps
    finally:
        set_profiling(False)
    os.makedirs(os.path.dirname(os.path.abspath(trace_path)), exist_ok=True)
    prof.export_chrome_trace(trace_path)
    averages = {evt.key: evt for evt in prof.key_averages()}
    step_us = _event_time_us(averages["decode_step"], on_cuda) / steps if "decode_step" in averages else wall_ms * 1e3
    if on_cuda and step_us == 0:
        step_us = wall_ms * 1e3
    rows = []
    for name in STAGES:
        if name in averages:
            us = _event_time_us(averages[name], on_cuda) / steps
            rows.append({"stage": name, "ms_per_step": us / 1e3, "calls_per_step": averages[name].count / steps})
    covered = sum(r["ms_per_step"] for r in rows)
    rows.append({"stage": "other", "ms_per_step": max(step_us / 1e3 - covered, 0.0), "calls_per_step": None})
    total = max(step_us / 1e3, covered)
    for r in rows:
        r["pct"] = 100 * r["ms_per_step"] / total if total else 0.0
    return {"trace": trace_path, "steps": steps, "time_base": "device" if on_cuda else "cpu",
            "step_ms": step_us / 1e3, "wall_ms_per_step": wall_ms, "stages": rows}


# Kernel name fragments, checked in order: the first group whose fragment appears names the kernel.
# "inner kernel" is the kernel that carries the recurrent state (TTT inner loop, SSM step, decode attention);
# the hand-written elementwise kernels around it (conv rings, norms) count as fused elementwise.
KERNEL_GROUPS = (
    ("inner kernel", ("_m2_dual_kernel", "_m1_dual_kernel", "_m1_dual_gluon_kernel", "_m2_primal_kernel",
                      "_m1_primal_kernel", "_m1_primal_gluon_kernel", "_ssm_step_kernel", "_decode_attention_kernel")),
    ("GEMM", ("gemm", "Gemm", "GEMM", "xmma", "cutlass", "nvjet", "cublas", "sm90_", "sm80_", "ampere_", "splitK",
              "gemv", "Gemv", "dot_kernel")),
    # _record_tokens_kernel: the engine's token bookkeeping (ops/step_tokens.py), the copies it replaced.
    ("copies", ("Memcpy", "memcpy", "Memset", "memset", "copy_kernel", "CatArrayBatchedCopy", "direct_copy",
                "_record_tokens_kernel")),
    ("fused elementwise", ("triton_", "elementwise_kernel", "reduce_kernel", "vectorized_", "_pre_conv_kernel",
                           "_qk_prep_kernel", "_gate_norm_kernel", "_conv_step_kernel", "_add_rms_norm_kernel")),
)
GROUPS = tuple(g for g, _ in KERNEL_GROUPS) + ("other",)


def kernel_group(name: str) -> str:
    """Which part of the step a CUDA kernel is, from its name (see KERNEL_GROUPS)."""
    for group, fragments in KERNEL_GROUPS:
        if any(f in name for f in fragments):
            return group
    return "other"


def profile_graph_session(session, steps: int, trace_path: str) -> dict:
    """Profile `steps` CUDA-graph replays of a (compiled) session: device time by kernel group, the
    heaviest kernels, kernel launches per step; write the trace; return the breakdown."""
    device = session.model.device
    activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    session.step()  # compiles and captures outside the profiled window
    torch.cuda.synchronize(device)
    with torch.profiler.profile(activities=activities) as prof:
        t0 = time.perf_counter()
        for _ in range(steps):
            session.step()
        torch.cuda.synchronize(device)
        wall_ms = (time.perf_counter() - t0) * 1e3 / steps
    os.makedirs(os.path.dirname(os.path.abspath(trace_path)), exist_ok=True)
    prof.export_chrome_trace(trace_path)
    kernels = {}
    for evt in prof.events():
        if getattr(evt, "device_type", None) != torch.autograd.DeviceType.CUDA:
            continue
        k = kernels.setdefault(evt.name, {"us": 0.0, "count": 0})
        k["us"] += float(getattr(evt, "device_time", None) or getattr(evt, "cuda_time", 0.0) or 0.0)
        k["count"] += 1
    groups = {g: {"ms_per_step": 0.0, "launches_per_step": 0.0} for g in GROUPS}
    for name, k in kernels.items():
        g = groups[kernel_group(name)]
        g["ms_per_step"] += k["us"] / 1e3 / steps
        g["launches_per_step"] += k["count"] / steps
    device_ms = sum(g["ms_per_step"] for g in groups.values())
    rows = [{"group": name, "ms_per_step": g["ms_per_step"], "launches_per_step": g["launches_per_step"],
             "pct": 100 * g["ms_per_step"] / device_ms if device_ms else 0.0} for name, g in groups.items()]
    top = sorted(kernels.items(), key=lambda kv: -kv[1]["us"])[:15]
    return {"trace": trace_path, "steps": steps, "mode": "compiled_graph", "time_base": "device",
            "step_ms": device_ms, "wall_ms_per_step": wall_ms,
            "launches_per_step": sum(g["launches_per_step"] for g in groups.values()), "groups": rows,
            "top_kernels": [{"name": n[:160], "group": kernel_group(n), "ms_per_step": k["us"] / 1e3 / steps,
                             "launches_per_step": k["count"] / steps} for n, k in top]}


def breakdown_markdown(bd: dict, title: str) -> str:
    if bd.get("mode") == "compiled_graph":
        lines = [f"### {title}", "", f"step: {bd['step_ms']:.3f} ms of device time ({bd['launches_per_step']:.0f} "
                 f"kernel launches; compiled step replayed from a CUDA graph, {bd['steps']} steps profiled)", "",
                 "| kernels | ms / step | % of step | launches / step |", "|---|---|---|---|"]
        for r in bd["groups"]:
            lines.append(f"| {r['group']} | {r['ms_per_step']:.3f} | {r['pct']:.1f} | {r['launches_per_step']:.0f} |")
        lines += ["", "| heaviest kernels | group | ms / step | launches / step |", "|---|---|---|---|"]
        for k in bd["top_kernels"]:
            lines.append(f"| `{k['name'][:80]}` | {k['group']} | {k['ms_per_step']:.3f} "
                         f"| {k['launches_per_step']:.0f} |")
        return "\n".join(lines) + "\n"
    lines = [f"### {title}", "", f"step: {bd['step_ms']:.3f} ms ({bd['time_base']} time, {bd['steps']} steps profiled)",
             "", "| stage | ms / step | % of step | calls / step |", "|---|---|---|---|"]
    for r in bd["stages"]:
        calls = "" if r["calls_per_step"] is None else f"{r['calls_per_step']:.0f}"
        lines.append(f"| {r['stage']} | {r['ms_per_step']:.3f} | {r['pct']:.1f} | {calls} |")
    return "\n".join(lines) + "\n"


def profile_cell(model, args, state_dtype, prompt, steps: int | None = None) -> dict:
    """The cell's --profile: prefill, then a few profiled steps; files in args.logdir. Eager steps with
    stage ranges, or with --use_compile (and CUDA graphs) the compiled step's graph replays."""
    from ttt_decode.decode.engine import DecodeSession
    from ttt_decode.errors import UserError

    compiled = bool(getattr(args, "use_compile", False)) and not getattr(args, "no_cg", False)
    if compiled and model.device.type != "cuda":
        raise UserError("profiling the compiled step replays a CUDA graph and needs a CUDA device; "
                        "on CPU profile the eager step (--no_cg, without --use_compile)")
    steps = steps or (16 if compiled else max(1, min(args.genlen, 8)))
    session = DecodeSession(model, args.batch, state_dtype=state_dtype, cuda_graph=compiled, compile=compiled,
                            max_steps=steps + 2, max_seq_len=args.promptlen + steps + 2)
    session.prefill(prompt, last_only=True)
    name = os.path.basename(str(args.model_name).rstrip("/"))
    tag = f"{name}_{getattr(model, 'inner_net', None) or 'default'}_B{args.batch}"
    tag = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in tag)
    if compiled:
        tag += "_compiled"
    trace = os.path.join(args.logdir, f"trace_{tag}.json")
    bd = profile_graph_session(session, steps, trace) if compiled else profile_session(session, steps, trace)
    with open(os.path.join(args.logdir, f"breakdown_{tag}.json"), "w") as fh:
        json.dump(bd, fh, indent=1)
    md = breakdown_markdown(bd, f"{args.model_name} {getattr(model, 'inner_net', '') or ''} batch {args.batch}")
    with open(os.path.join(args.logdir, f"breakdown_{tag}.md"), "w") as fh:
        fh.write(md)
    print(md)
    return bd
