"""One benchmark cell: one model, batch, prompt and generation length; one record appended.

    python benchmark_prefill_decode.py --logdir ./exp/M2_decode_2k --model-name ttt-1b --mode decode \
        --batch 128 --promptlen 1 --genlen 2048 --inner_net mlp_2_dual_triton --use_compile

Timing (DESIGN sections 7, 8 and 13): the model is built and the DecodeSession constructed (compile,
autotune and CUDA-graph capture happen there: `cold_start_s`, never inside a timed window); one
untimed run of the whole mode; then `--repeats` timed runs. Prefill is timed apart from decode.
Decode is `genlen` steps (one token each, the first fed by the prefill's last token) with a CUDA
event after every step (perf_counter on CPU), so each step has its own time; throughput is
batch x genlen / (sum of the step times), i.e. computed from the mean step time. Compile counters
and graph replays are compared before and after the timed window: a cell that recompiled, or ran
eagerly where a graph was asked for, says so (`warnings`).

Checked before anything is built: the mode, the model name, the `--calibration` file and that the
logdir can be written. Before the prompt and the state are allocated, the memory estimate
(decode.engine.check_memory) refuses a cell over the device's memory: recorded as `oom` with reason
"estimate". Logits are checked for NaN/inf after the untimed run and after the timed runs (outside
the timed windows): non-finite logits are recorded as `error`. Progress (what runs, the estimate,
compile/warm-up, each timed run) goes to stderr, so a long cell never sits silent.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import resource
import statistics
import sys
import time
import traceback

import torch

from ttt_decode.bench import roofline
from ttt_decode.bench.records import (
    RESULTS,
    append_jsonl,
    cell_id,
    log_line,
    prepare_logdir,
)
from ttt_decode.decode.engine import MEMORY_MARGIN, check_finite, check_memory, is_oom, prefill_chunk_len
from ttt_decode.errors import NonFiniteLogits, OutOfMemoryEstimate, UserError
from ttt_decode.ops.ttt_mlp import naive as m2_naive
from ttt_decode.provenance import gpu_name, provenance

MODES = ("prefill", "decode", "prefill_decode")
# In decode mode, prompts at least this long are prefilled once per cell (bench.cell one_run): below it
# a prefill costs less than the copy of the state.
REUSE_PREFILL_MIN_PROMPT = 256
# Fault injection for the sweep's tests: "kill:batch=N" makes a cell with that batch kill itself;
# "hold:batch=N:PATH" makes it append its pid to PATH.started, then wait until PATH exists.
FAULT_ENV = "TTT_DECODE_FAULT_INJECT"
HOLD_LIMIT_S = 120
EXIT_CODES = """exit codes: 0 ok (record written); 1 the cell failed (recorded as error); 2 bad input (nothing run,
no record); 3 out of memory (recorded as oom: measured, or estimated over the device's memory);
4 the record could not be written (disk full, permissions)"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ttt_decode.cli_args import (
        add_decode_args,
        add_model_args,
        positive_float,
        positive_int,
    )

    p.add_argument("--logdir", required=True, help="directory for results.jsonl, logging.log and traces")
    add_model_args(p, default_model="ttt-1b")
    p.add_argument("--mode", choices=MODES, default="decode",
                   help="what to time: prefill only, decode only (prefill untimed), or both (default decode)")
    add_decode_args(p, batch=16, promptlen=1, genlen=128, genlen_help="decode steps timed")
    p.add_argument("--profile", action="store_true",
                   help="also write a torch.profiler trace (.json, opens in ui.perfetto.dev) of a few eager "
                        "decode steps with stage names, and a breakdown of step time by stage")
    p.add_argument("--repeats", type=positive_int, default=3, help="timed repeats after the untimed run (default 3)")
    p.add_argument("--calibration", default=None,
                   help="roofline JSON from `ttt-decode calibrate` (default: the cached one for this device, "
                        "measured now if missing)")
    p.add_argument("--wandb", action="store_true", help="also log the record to wandb (offline unless WANDB_MODE says)")
    p.add_argument("--wandb-project", dest="wandb_project", default="ttt-decode",
                   help="wandb project (default ttt-decode)")
    p.add_argument("--max-memory-gb", dest="max_memory_gb", type=positive_float, default=None,
                   help="memory the estimate compares against, GB (default: the GPU's total memory on CUDA, "
                        "the machine's RAM on CPU); a cell estimated over it is recorded as oom without running")
    p.add_argument("--cell-id", dest="cell_id", default=None, help=argparse.SUPPRESS)
    p.epilog = EXIT_CODES


def _stats(ms: list[float]) -> dict:
    s = sorted(ms)

    def pct(p):
        return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]

    return {"mean": statistics.fmean(s), "median": statistics.median(s), "p10": pct(10), "p90": pct(90),
            "p99": pct(99), "stdev": statistics.pstdev(s), "min": s[0], "max": s[-1], "n": len(s)}


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed_steps(session, genlen: int, device) -> tuple[list[float], torch.Tensor | None]:
    """genlen decode steps: the time of each in ms (CUDA events: no host sync between steps) and the
    last step's logits [B, V] (checked for NaN after timing)."""
    logits = None
    if device.type == "cuda":
        events = [torch.cuda.Event(enable_timing=True) for _ in range(genlen + 1)]
        events[0].record()
        for i in range(genlen):
            logits = session.step()
            events[i + 1].record()
        events[-1].synchronize()
        return [events[i].elapsed_time(events[i + 1]) for i in range(genlen)], logits
    times = []
    for _ in range(genlen):
        t0 = time.perf_counter()
        logits = session.step()
        times.append((time.perf_counter() - t0) * 1e3)
    return times, logits


def _timed_prefill(session, prompt, device) -> tuple[float, torch.Tensor]:
    """ms of the prefill (in chunks, the LM head on the last position: what generation does), and the
    logits of its last position [B, V]."""
    _sync(device)
    t0 = time.perf_counter()
    logits = session.prefill(prompt, last_only=True)
    _sync(device)
    return (time.perf_counter() - t0) * 1e3, logits[:, -1]


def _say(text: str) -> None:
    """A progress line on stderr (stdout keeps the one summary line)."""
    print(f"bench: {text}", file=sys.stderr, flush=True)


def _memory(device) -> dict:
    if device.type == "cuda":
        return {"allocated_gb": round(torch.cuda.max_memory_allocated(device) / 2**30, 3),
                "reserved_gb": round(torch.cuda.max_memory_reserved(device) / 2**30, 3)}
    return {"max_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)}


def _reset_peak(device):
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _compile_counters() -> dict:
    try:
        from torch._dynamo.utils import counters
    except ImportError:
        return {}
    return {k: dict(v) for k, v in counters.items() if k in ("stats", "recompiles", "graph_break")}


def _kernel_path(model, cuda_graph: bool, compiled: bool) -> dict:
    """What actually ran: the inner loop / mixer implementation and how the step was driven."""
    inner = getattr(model, "inner_net", None)
    path = {"inner_net": inner, "decode_path": "cuda_graph" if cuda_graph else "eager", "compiled": compiled}
    if hasattr(model, "form") and hasattr(model, "impl"):
        path["ttt_path"] = f"{'triton' if model.impl == 'triton' else 'torch'}_{model.form}"
        if getattr(model, "kind", None) == "mlp" and model.form == "dual":
            # TTT-MLP's cache convention (DESIGN section 9.8): which kernel ran, whatever the default was then.
            path["m2_defer_w1"] = m2_naive.DEFER_W1
    return path


def _inject_fault(batch: int) -> None:
    spec = os.environ.get(FAULT_ENV, "")
    if spec.startswith("kill:batch=") and int(spec.split("=", 1)[1]) == batch:
        os.kill(os.getpid(), 9)
    if spec.startswith("hold:batch="):
        which, path = spec[len("hold:batch="):].split(":", 1)
        if int(which) != batch:
            return
        with open(path + ".started", "a") as fh:
            fh.write(f"{os.getpid()}\n")
        deadline = time.monotonic() + HOLD_LIMIT_S
        while not os.path.exists(path):
            if time.monotonic() > deadline:
                raise RuntimeError(f"fault injection: {path} did not appear within {HOLD_LIMIT_S} s")
            time.sleep(0.05)


def requested_cell(args) -> dict:
    """The cell as asked for (the fields of records.cell_key), whether run alone or by a sweep."""
    return {"model": args.model_name, "inner_net": args.inner_net, "dtype": args.dtype,
            "state_dtype": args.state_dtype, "mode": args.mode, "batch": args.batch, "promptlen": args.promptlen,
            "genlen": args.genlen, "compile": bool(args.use_compile), "cuda_graph": not args.no_cg}


def preflight(args) -> None:
    """Everything about the flags that can be checked before a model is built: one UserError each."""
    from ttt_decode.dtypes import resolve_device
    from ttt_decode.models.checkpoint import check_model_path
    from ttt_decode.models.common import check_triton_usable

    if args.mode not in MODES:
        raise UserError(f"unknown mode {args.mode!r}; choose {', '.join(MODES)}")
    check_model_name(args.model_name)
    check_model_path(args.model_name)
    device = resolve_device(args.device)
    check_triton_usable(args.inner_net, device)
    if args.calibration:
        roofline.read_calibration(args.calibration, gpu_name(device))
    prepare_logdir(args.logdir)
    if args.cell_id is None:
        args.cell_id = cell_id(requested_cell(args))


def check_model_name(spec: str) -> None:
    """A config name, hub alias, checkpoint directory or hf:/mamba-ssm: baseline; else UserError (get_config's)."""
    from ttt_decode.configs import get_config
    from ttt_decode.models import BASELINE_PREFIXES
    from ttt_decode.models.checkpoint import looks_like_path

    if os.path.isdir(spec) or looks_like_path(spec) or spec.partition(":")[0] in BASELINE_PREFIXES:
        return
    get_config(spec)


def run_cell(args) -> dict:
    """Build, time and describe one cell; returns the record (status ok). Raises on failure."""
    from ttt_decode.decode.engine import DecodeSession
    from ttt_decode.dtypes import parse_dtype, resolve_device
    from ttt_decode.models import load_model

    _inject_fault(args.batch)
    torch.manual_seed(args.seed)
    _say(f"{args.model_name} {args.inner_net or '(default inner net)'} {args.mode} batch {args.batch} prompt "
         f"{args.promptlen} genlen {args.genlen} {args.dtype} on {resolve_device(args.device)}: building the model")
    t_build = time.perf_counter()
    model = load_model(args.model_name, inner_net=args.inner_net, dtype=args.dtype, device=args.device, seed=args.seed)
    device = model.device
    _sync(device)
    build_s = time.perf_counter() - t_build
    state_dtype = parse_dtype(args.state_dtype) if args.state_dtype else None
    cuda_graph = device.type == "cuda" and not args.no_cg and getattr(model, "supports_cuda_graph", True)
    warnings = []
    if device.type == "cuda" and not args.no_cg and not cuda_graph:
        warnings.append(f"{type(model).__name__} cannot capture its step in a CUDA graph: ran eagerly")
    mem = {"weights": _memory(device)}
    max_seq_len = args.promptlen + args.genlen + 1
    limit = args.max_memory_gb * 2**30 if args.max_memory_gb else None
    est = check_memory(model, args.batch, state_dtype, max_seq_len, args.promptlen, limit, last_only=True)
    _say(f"built {getattr(model, 'inner_net', None) or type(model).__name__} on {device} in {build_s:.1f} s; "
         f"estimated memory {est['total'] / 2**30:.3g} GB of {est['limit'] / 2**30:.3g} GB")

    cal, cal_source = roofline.load_or_measure(device, args.calibration)
    uses_kv = getattr(model, "uses_kv_cache", False)
    context = args.promptlen + args.genlen // 2
    cost = model.decode_cost(args.batch, state_dtype, context=context) if uses_kv else model.decode_cost(args.batch,
                                                                                                         state_dtype)
    fl = roofline.floor(cost["bytes"], cost["flops"], cal, model.dtype)

    gen = torch.Generator().manual_seed(args.seed)
    prompt = torch.randint(0, model.vocab_size, (args.batch, args.promptlen), generator=gen).to(device)
    native = getattr(model, "native_generate", None)
    record = {
        "kind": "bench", **provenance(device), "cell_id": args.cell_id, "status": "ok",
        "model": args.model_name, "config_name": getattr(model.config, "name", None),
        "config": dataclasses.asdict(model.config) if dataclasses.is_dataclass(model.config) else None,
        "weights_source": getattr(model, "weights_source", None),
        "checkpoint_config": getattr(model, "checkpoint_config", None),
        "dtype": str(model.dtype).replace("torch.", ""),
        "state_dtype": str(state_dtype or _default_state_dtype(model)).replace("torch.", ""),
        "mode": args.mode, "batch": args.batch, "promptlen": args.promptlen, "genlen": args.genlen,
        "prefill_chunk_len": prefill_chunk_len(model, args.batch, args.promptlen),
        "repeats": args.repeats, "seed": args.seed, "compile": bool(args.use_compile), "cuda_graph": cuda_graph,
        **_kernel_path(model, cuda_graph, bool(args.use_compile)),
        "state_bytes_per_seq": model.state_bytes_per_seq(state_dtype) if not uses_kv else
        model.state_bytes_per_seq(state_dtype, context=context),
        "weight_bytes": cost["weight_bytes"], "bytes_per_step": cost["bytes"], "flops_per_step": cost["flops"],
        "roofline": {"copy_gb_per_s": cal["copy_gb_per_s"], "matmul_tflops": roofline.matmul_rate(cal, model.dtype),
                     "source": cal_source, "calibrated": cal.get("time")},
        **fl, "build_s": round(build_s, 3), "memory_estimate_gb": round(est["total"] / 2**30, 4),
    }
    if uses_kv:
        record["context_for_cost"] = context

    if native is not None:
        if args.mode != "decode":
            raise UserError(f"{args.model_name} runs its own generate loop: only --mode decode is supported")
        record.update(decode_path="native_generate", cuda_graph=True)
        native(prompt, args.genlen)  # untimed: compiles and captures its graphs
        runs = [native(prompt, args.genlen) for _ in range(args.repeats)]
        decode_s = statistics.fmean(r["decode_s"] for r in runs)
        steps = runs[0]["decode_steps"]
        record.update(decode_s=decode_s, decode_steps=steps,
                      prefill_ms=statistics.fmean(r["prefill_s"] for r in runs) * 1e3,
                      step_ms={"mean": decode_s / steps * 1e3, "n": steps * len(runs)})
        _throughput(record, args.batch, steps, decode_s)
        return _finish(record, mem, device, warnings)

    _reset_peak(device)
    t_cold = time.perf_counter()
    how = " + ".join(w for w, on in (("torch.compile", args.use_compile), ("CUDA-graph capture", cuda_graph)) if on)
    _say(f"allocating the state{f' and warming up ({how})' if how else ''} ...")
    session = DecodeSession(model, args.batch, state_dtype=state_dtype, cuda_graph=cuda_graph,
                            compile=bool(args.use_compile), max_steps=args.genlen + 1, max_seq_len=max_seq_len,
                            max_memory_bytes=limit)
    _sync(device)
    record["cold_start_s"] = round(session.cold_start_s, 3)
    record["cold_start"] = session.cold_start
    record["session_s"] = round(time.perf_counter() - t_cold, 3)
    mem["state"] = _memory(device)
    record["state_allocated_gb"] = round(_state_nbytes(session.state) / 2**30, 3)
    if hasattr(model, "step_options"):  # our models: the K-split and fused-kernel choices the step runs with
        record["step_options"] = model.step_options(session.state)

    timed_decode = args.mode in ("decode", "prefill_decode")
    # In decode mode the prefill is not timed: with a long prompt, the untimed run's prefill is kept (a
    # copy of the state, where there is room for one) and every timed run decodes from it rather than
    # prefilling the same prompt again (a 32 k prompt takes 40-75 s to prefill on the H200).
    reuse = (args.mode == "decode" and args.promptlen >= REUSE_PREFILL_MIN_PROMPT and session.can_snapshot()
             and _state_nbytes(session.state) * (1 + MEMORY_MARGIN) < _free_bytes(device))
    kept = {}

    def one_run():
        """(prefill ms or None where none ran, step ms, (prefill logits, last step logits))."""
        if "snap" in kept:
            session.restore(kept["snap"])
            p, prefill_logits = None, kept["logits"]
        else:
            session.reset()
            p, prefill_logits = _timed_prefill(session, prompt, device)
            if reuse:
                kept.update(snap=session.snapshot(), logits=prefill_logits, ms=p)
        steps, last_logits = _timed_steps(session, args.genlen, device) if timed_decode else ([], None)
        return p, steps, (prefill_logits, last_logits)

    def check_logits(ends, when):
        """ends: the logits of the prefill's last position and of the last decode step (None: no decode)."""
        check_finite(ends[0], model.vocab_size, f"in the prefill ({when})")
        if ends[1] is not None:
            check_finite(ends[1], model.vocab_size, f"at decode step {args.genlen} ({when})")

    _say(f"cold start {session.cold_start_s:.1f} s; untimed run ({args.genlen if timed_decode else 0} steps) ...")
    t_untimed = time.perf_counter()
    # Untimed: first-touch, lazy inits; nothing compiles or captures after this point.
    check_logits(one_run()[2], "untimed run")
    untimed_s = time.perf_counter() - t_untimed
    _say(f"untimed run {untimed_s:.1f} s; {args.repeats} timed run(s), about {args.repeats * untimed_s:.0f} s")
    counters_before = _compile_counters()
    replays_before = session.graph_replays
    _reset_peak(device)
    prefill_ms, step_ms, decode_totals, e2e = [], [], [], []
    for i in range(args.repeats):
        _sync(device)
        t0 = time.perf_counter()
        p, steps, ends = one_run()
        _sync(device)
        e2e.append(time.perf_counter() - t0)
        if p is not None:
            prefill_ms.append(p)
        step_ms.extend(steps)
        decode_totals.append(sum(steps) / 1e3)
        _say(f"timed run {i + 1}/{args.repeats}: {e2e[-1]:.2f} s")
    check_logits(ends, "last timed run")
    mem["decode"] = _memory(device)
    if _compile_counters() != counters_before:
        warnings.append("torch.compile counters changed inside the timed window (a recompile)")
    if cuda_graph and timed_decode and session.graph_replays - replays_before != args.repeats * args.genlen:
        warnings.append("fewer CUDA-graph replays than steps: part of the decode ran eagerly")

    if not prefill_ms:  # every timed run decoded from the untimed run's prefill
        prefill_ms = [kept["ms"]]
    kept.clear()
    record["prefill_reused"] = reuse
    record["prefill_runs"] = 1 + (0 if reuse else args.repeats)
    record["prefill_ms"] = statistics.fmean(prefill_ms)
    record["prefill_ms_stats"] = _stats(prefill_ms)
    record["prefill_tokens_per_s"] = args.batch * args.promptlen / (record["prefill_ms"] / 1e3)
    record["e2e_s"] = statistics.fmean(e2e)
    if timed_decode:
        decode_s = statistics.fmean(decode_totals)
        record["decode_s"] = decode_s
        record["decode_steps"] = args.genlen
        record["step_ms"] = _stats(step_ms)
        q = max(1, args.genlen // 4)
        per_run = [step_ms[i * args.genlen:(i + 1) * args.genlen] for i in range(args.repeats)]
        record["step_ms_early"] = statistics.fmean(x for run in per_run for x in run[:q])
        record["step_ms_late"] = statistics.fmean(x for run in per_run for x in run[-q:])
        b = getattr(model.config, "mini_batch_size", None)
        if b:
            by_pos = {}
            for run in per_run:
                for t, ms in enumerate(run):
                    by_pos.setdefault((args.promptlen + t) % b, []).append(ms)
            record["step_ms_by_minibatch_position"] = {str(k): statistics.fmean(v) for k, v in sorted(by_pos.items())}
        _throughput(record, args.batch, args.genlen, decode_s)
    if args.profile:
        from ttt_decode.bench.profiler import profile_cell

        record["profile"] = profile_cell(model, args, state_dtype, prompt)
    session = None  # the state is freed before the record is finished
    return _finish(record, mem, device, warnings)


def _default_state_dtype(model):
    if hasattr(model, "default_state_dtype"):
        return model.default_state_dtype()
    return model.dtype


def _free_bytes(device) -> int:
    """Memory free for a copy of the state: the GPU's (torch.cuda.mem_get_info), RAM on CPU."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def _state_nbytes(state) -> int:
    return state.nbytes() if hasattr(state, "nbytes") else 0


def _throughput(record, batch, steps, decode_s):
    record["decode_tokens_per_s"] = batch * steps / decode_s
    record["per_seq_tokens_per_s"] = steps / decode_s
    step_s = decode_s / steps
    record["achieved_gb_per_s"] = record["bytes_per_step"] / step_s / 1e9
    record["achieved_tflops"] = record["flops_per_step"] / step_s / 1e12
    record["pct_of_roofline"] = 100 * record["floor_ms"] / (step_s * 1e3)
    record["pct_of_copy_bw"] = 100 * record["achieved_gb_per_s"] / record["roofline"]["copy_gb_per_s"]


def _finish(record, mem, device, warnings):
    record["peak_mem_gb"] = max((m.get("allocated_gb", m.get("max_rss_gb", 0)) for m in mem.values()), default=0)
    record["memory"] = mem
    record["warnings"] = warnings
    return record


def failure_record(args, status: str, message: str) -> dict:
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    return {"kind": "bench", **provenance(device), "cell_id": args.cell_id, "status": status,
            "error": message, "model": args.model_name, "inner_net": args.inner_net, "dtype": args.dtype,
            "state_dtype": args.state_dtype, "mode": args.mode, "batch": args.batch, "promptlen": args.promptlen,
            "genlen": args.genlen, "compile": bool(args.use_compile), "cuda_graph": not args.no_cg}


def _record_failure(args, path: str, status: str, message: str, trace: str = "") -> int:
    record = failure_record(args, status, message)
    append_jsonl(path, record)
    log_line(args.logdir, summary(record) + ("\n" + trace if trace else ""))
    print(summary(record), file=sys.stderr)
    return 3 if status == "oom" else 1


def summary(record: dict) -> str:
    if record["status"] != "ok":
        return (f"{record['model']} {record.get('inner_net') or ''} B={record['batch']}: {record['status'].upper()} "
                f"{record.get('error', '')}")
    parts = [f"{record['model']} {record.get('inner_net') or ''} B={record['batch']} {record['mode']}"]
    if "decode_tokens_per_s" in record:
        parts.append(f"decode {record['decode_tokens_per_s']:,.0f} tok/s, step {record['step_ms']['mean']:.3f} ms "
                     f"(median {record['step_ms'].get('median', record['step_ms']['mean']):.3f}), "
                     f"{record['achieved_gb_per_s']:.0f} GB/s, {record['pct_of_roofline']:.0f}% of roofline")
    if record["mode"] != "decode":
        parts.append(f"prefill {record['prefill_ms']:.2f} ms ({record['prefill_tokens_per_s']:,.0f} tok/s)")
    if "cold_start_s" in record:
        parts.append(f"cold start {record['cold_start_s']:.1f} s")
    return " | ".join(parts)


def main(args) -> int:
    """Run one cell and append its record; the exit code says how it ended (EXIT_CODES)."""
    preflight(args)
    path = os.path.join(args.logdir, RESULTS)
    try:
        record = run_cell(args)
    except (OutOfMemoryEstimate, NonFiniteLogits) as e:
        # Bad input found only once the model exists: a result of the cell, so it is recorded.
        return _record_failure(args, path, "oom" if isinstance(e, OutOfMemoryEstimate) else "error", str(e))
    except UserError:
        raise
    except BaseException as e:  # noqa: BLE001 - every failure becomes a record, then the cell exits non-zero
        if isinstance(e, KeyboardInterrupt):
            raise
        message = " ".join(f"{type(e).__name__}: {e}".split())[:500]
        return _record_failure(args, path, "oom" if is_oom(e) else "error", message, traceback.format_exc())
    append_jsonl(path, record)
    log_line(args.logdir, summary(record) + (f" | warnings: {record['warnings']}" if record["warnings"] else ""))
    if args.wandb:
        from ttt_decode.bench.wandb_log import log_record

        log_record(record, project=args.wandb_project, logdir=args.logdir)
    print(summary(record))
    for w in record["warnings"]:
        print(f"warning: {w}", file=sys.stderr)
    return 0
