"""Profiler traces of the decode step, with readable stage names (`--profile`, `ttt-decode profile`).

A few decode steps run eagerly (a CUDA graph would show as one opaque replay) under torch.profiler
with the models' stage ranges switched on (models.common.stage: "ttt.proj", "ttt.inner_loop", "mlp",
"lm_head", "sampling", ...; NVTX ranges of the same names on CUDA for `nsys profile`). The trace is
written as Chrome-trace JSON into the logdir (open it in ui.perfetto.dev), and the step time is broken
down by stage: device time of the kernels launched inside each range on CUDA, CPU time on CPU,
per step, with its share of the step; "other" is what no stage covers.
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


def breakdown_markdown(bd: dict, title: str) -> str:
    lines = [f"### {title}", "", f"step: {bd['step_ms']:.3f} ms ({bd['time_base']} time, {bd['steps']} steps profiled)",
             "", "| stage | ms / step | % of step | calls / step |", "|---|---|---|---|"]
    for r in bd["stages"]:
        calls = "" if r["calls_per_step"] is None else f"{r['calls_per_step']:.0f}"
        lines.append(f"| {r['stage']} | {r['ms_per_step']:.3f} | {r['pct']:.1f} | {calls} |")
    return "\n".join(lines) + "\n"


def profile_cell(model, args, state_dtype, prompt, steps: int | None = None) -> dict:
    """The cell's --profile: an eager session, prefill, a few profiled steps; files in args.logdir."""
    from ttt_decode.decode.engine import DecodeSession

    steps = steps or max(1, min(args.genlen, 8))
    session = DecodeSession(model, args.batch, state_dtype=state_dtype, cuda_graph=False, compile=False,
                            max_steps=steps + 2, max_seq_len=args.promptlen + steps + 2)
    session.prefill(prompt)
    tag = f"{os.path.basename(str(args.model_name).rstrip('/'))}_{getattr(model, 'inner_net', None) or 'default'}_B{args.batch}"
    tag = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in tag)
    trace = os.path.join(args.logdir, f"trace_{tag}.json")
    bd = profile_session(session, steps, trace)
    with open(os.path.join(args.logdir, f"breakdown_{tag}.json"), "w") as fh:
        json.dump(bd, fh, indent=1)
    md = breakdown_markdown(bd, f"{args.model_name} {getattr(model, 'inner_net', '') or ''} batch {args.batch}")
    with open(os.path.join(args.logdir, f"breakdown_{tag}.md"), "w") as fh:
        fh.write(md)
    print(md)
    return bd


def add_arguments(p):
    from ttt_decode.bench.cell import add_arguments as cell_arguments

    cell_arguments(p)
    p.set_defaults(mode="decode", genlen=8, no_cg=True, profile=True, repeats=1)


def main(args) -> int:
    """`ttt-decode profile`: a decode cell with --profile (eager steps, trace + breakdown)."""
    from ttt_decode.bench.cell import main as cell_main

    args.profile = True
    return cell_main(args)
