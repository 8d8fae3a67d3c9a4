"""`ttt-decode sweep`: models x inner nets x batch sizes x generation lengths, one process per cell.

Each cell runs `ttt-decode bench` in its own process, so an out-of-memory cell (or a crash) takes
down only itself: the cell writes an `oom` / `error` record, or, if its process dies without one
(killed, time limit), the sweep writes it (`killed` / `timeout`). Before running, a cell whose
estimated memory (weights + state x batch + activations, from the config, nothing allocated) is over
the GPU's memory is recorded as `oom` with reason "estimate". A sweep resumes: a cell already in
`<logdir>/results.jsonl` (any status) is skipped. `--gpus 0,1,...` runs one worker per GPU; each
cell's process sees exactly one GPU (CUDA_VISIBLE_DEVICES) and its record names it.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import queue
import subprocess
import sys
import threading
import time

from ttt_decode.bench.records import RESULTS, append_jsonl, log_line, provenance, read_jsonl
from ttt_decode.errors import UserError

# Activations and logits of one decode step per sequence are small next to the state; this margin
# (fraction of GPU memory) covers them, the CUDA context and allocator slack in the estimate.
MEMORY_MARGIN = 0.06


def _split(text: str | None) -> list[str]:
    return [t.strip() for t in (text or "").replace(" ", ",").split(",") if t.strip()]


def _ints(text: str) -> list[int]:
    try:
        values = [int(t) for t in _split(text)]
    except ValueError:
        raise UserError(f"expected a comma-separated list of integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise UserError(f"sizes must be positive integers, got {text!r}")
    return values


def cell_key(c: dict) -> tuple:
    return (c["model"], c.get("inner_net") or "", c["dtype"], c.get("state_dtype") or "", c["mode"], int(c["batch"]),
            int(c["promptlen"]), int(c["genlen"]), bool(c["compile"]), bool(c["cuda_graph"]))


def cell_id(c: dict) -> str:
    return hashlib.sha1(repr(cell_key(c)).encode()).hexdigest()[:12]


def _inner_nets_for(model: str, inner_nets: list[str]) -> list[str | None]:
    """Inner nets that apply to a model: mlp_* for TTT, mamba_* for Mamba, attn_* for Transformers."""
    from ttt_decode.configs import ALIASES, CONFIGS

    name = model.split(":", 1)[1] if ":" in model and not os.path.isdir(model) else model
    kind = CONFIGS[ALIASES.get(name, name)].kind if ALIASES.get(name, name) in CONFIGS else None
    if model.startswith(("hf:", "mamba-ssm:")):
        return [None]
    prefix = {"ttt": "mlp_", "mamba": "mamba_", "transformer": "attn_"}.get(kind)
    chosen = [n for n in inner_nets if prefix and n.startswith(prefix)] if kind else inner_nets
    return chosen or [None]


def plan(args) -> list[dict]:
    cells = []
    for model, batch, genlen in itertools.product(_split(args.models), _ints(args.batches), _ints(args.genlens)):
        for inner in _inner_nets_for(model, _split(args.inner_nets)):
            c = {"model": model, "inner_net": inner, "dtype": args.dtype, "state_dtype": args.state_dtype,
                 "mode": args.mode, "batch": batch, "promptlen": args.promptlen, "genlen": genlen,
                 "compile": args.use_compile, "cuda_graph": not args.no_cg}
            c["cell_id"] = cell_id(c)
            cells.append(c)
    if not cells:
        raise UserError("the sweep has no cells: give --models and --batches")
    return cells


def estimate_memory_gb(c: dict) -> float | None:
    """Weights + batch x recurrent state (+ KV cache) + margin, from the config; None if unknown."""
    import torch

    from ttt_decode.models import load_model, parse_dtype

    if os.path.isdir(c["model"]) or ":" in c["model"]:
        return None
    try:
        model = load_model(c["model"], inner_net=c["inner_net"], dtype=c["dtype"], device="meta")
    except UserError:
        return None
    state_dtype = parse_dtype(c["state_dtype"]) if c["state_dtype"] else None
    if getattr(model, "uses_kv_cache", False):
        per_seq = model.state_bytes_per_seq(state_dtype, context=c["promptlen"] + c["genlen"] + 1)
    else:
        per_seq = model.state_bytes_per_seq(state_dtype)
    # Per-sequence activations of one step: logits in fp32 (twice: step output and sampling) + hidden.
    act = 3 * 4 * model.config.padded_vocab_size
    total = model.weight_bytes() + c["batch"] * (per_seq + act)
    del model
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return total / 2**30


def _bench_argv(c: dict, args) -> list[str]:
    argv = [sys.executable, "-m", "ttt_decode.cli", "bench", "--logdir", args.logdir, "--model-name", c["model"],
            "--mode", c["mode"], "--batch", str(c["batch"]), "--promptlen", str(c["promptlen"]),
            "--genlen", str(c["genlen"]), "--dtype", c["dtype"], "--repeats", str(args.repeats),
            "--seed", str(args.seed), "--cell-id", c["cell_id"]]
    if c["inner_net"]:
        argv += ["--inner_net", c["inner_net"]]
    if c["state_dtype"]:
        argv += ["--state-dtype", c["state_dtype"]]
    if c["compile"]:
        argv.append("--use_compile")
    if not c["cuda_graph"]:
        argv.append("--no_cg")
    if args.device:
        argv += ["--device", args.device]
    if args.calibration:
        argv += ["--calibration", args.calibration]
    if args.max_memory_gb:
        argv += ["--max-memory-gb", str(args.max_memory_gb)]
    if args.wandb:
        argv.append("--wandb")
    return argv


def _memory_limiter(limit_gb: float | None):
    """preexec_fn capping the cell process's address space (CPU cells only: CUDA needs a large one)."""
    if not limit_gb:
        return None

    def limit():
        import resource

        n = int(limit_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (n, n))

    return limit


class Sweep:
    def __init__(self, args):
        self.args = args
        self.path = os.path.join(args.logdir, RESULTS)
        self.lock = threading.Lock()
        self.done = 0
        self.started = time.time()

    def recorded_ids(self) -> set[str]:
        return {r.get("cell_id") for r in read_jsonl(self.path) if r.get("kind") == "bench"}

    def record_without_running(self, c: dict, status: str, message: str, gpu: str | None = None) -> None:
        rec = {"kind": "bench", **provenance("cpu" if self.args.device == "cpu" else None), "status": status,
               "error": message, **{k: v for k, v in c.items()}}
        rec["gpu_assigned"] = gpu
        append_jsonl(self.path, rec)
        log_line(self.args.logdir, f"{c['model']} {c['inner_net'] or ''} B={c['batch']}: {status.upper()} {message}")

    def run_cell(self, c: dict, gpu: str | None) -> str:
        env = dict(os.environ)
        env.setdefault("PYTHONUNBUFFERED", "1")
        src = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
        if gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = gpu
            env["TTT_DECODE_GPU_ASSIGNED"] = gpu  # the cell's record names the GPU the sweep gave it
        limiter = _memory_limiter(self.args.cell_mem_limit_gb) if self.args.device == "cpu" else None
        try:
            proc = subprocess.run(_bench_argv(c, self.args), env=env, capture_output=True, text=True,
                                  timeout=self.args.cell_timeout, preexec_fn=limiter)
        except subprocess.TimeoutExpired:
            self.record_without_running(c, "timeout", f"no result within --cell-timeout {self.args.cell_timeout} s", gpu)
            return "timeout"
        with self.lock:
            log_line(self.args.logdir, f"cell {c['cell_id']} exit {proc.returncode}\n{proc.stdout[-2000:]}{proc.stderr[-4000:]}")
        if c["cell_id"] in self.recorded_ids():
            rec = [r for r in read_jsonl(self.path) if r.get("cell_id") == c["cell_id"]][-1]
            return rec["status"]
        if proc.returncode < 0:
            self.record_without_running(c, "killed", f"cell process killed by signal {-proc.returncode}", gpu)
            return "killed"
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        self.record_without_running(c, "error", f"cell process exited {proc.returncode} without a record: {last}", gpu)
        return "error"

    def _progress(self, total: int):
        try:
            from tqdm import tqdm

            return tqdm(total=total, unit="cell", dynamic_ncols=True)
        except ImportError:
            return None

    def run(self, cells: list[dict]) -> dict:
        recorded = self.recorded_ids()
        todo = [c for c in cells if c["cell_id"] not in recorded]
        skipped = len(cells) - len(todo)
        print(f"sweep: {len(cells)} cells, {skipped} already recorded, {len(todo)} to run -> {self.path}")
        limit = self.args.max_memory_gb or _gpu_memory_gb(self.args.device)
        statuses = {}
        runnable = []
        for c in todo:
            est = estimate_memory_gb(c) if limit else None
            if est is not None and est * (1 + MEMORY_MARGIN) > limit:
                self.record_without_running(c, "oom", f"estimate: needs about {est:.1f} GB, the device has {limit:.1f} GB")
                statuses[c["cell_id"]] = "oom"
            else:
                runnable.append(c)
        gpus = _split(self.args.gpus) or [None]
        work = queue.Queue()
        for c in runnable:
            work.put(c)
        bar = self._progress(len(runnable))

        def worker(gpu):
            while True:
                try:
                    c = work.get_nowait()
                except queue.Empty:
                    return
                label = f"{c['model']} {c['inner_net'] or ''} B={c['batch']} gen={c['genlen']}" + (f" gpu{gpu}" if gpu else "")
                with self.lock:
                    if bar is not None:
                        bar.set_description(label)
                    else:
                        print(f"[{self.done + 1}/{len(runnable)}] {label} ...", flush=True)
                status = self.run_cell(c, gpu)
                with self.lock:
                    statuses[c["cell_id"]] = status
                    self.done += 1
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix_str(status)
                    else:
                        elapsed = time.time() - self.started
                        eta = elapsed / self.done * (len(runnable) - self.done)
                        print(f"[{self.done}/{len(runnable)}] {label}: {status} (ETA {eta:.0f} s)", flush=True)

        threads = [threading.Thread(target=worker, args=(g,), daemon=True) for g in gpus]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if bar is not None:
            bar.close()
        counts = {}
        for s in statuses.values():
            counts[s] = counts.get(s, 0) + 1
        print(f"sweep done in {time.time() - self.started:.0f} s: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
              + (f"; {skipped} skipped (already recorded)" if skipped else ""))
        return counts


def _gpu_memory_gb(device) -> float | None:
    import torch

    if device == "cpu" or not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_properties(0).total_memory / 2**30


def add_arguments(p):
    from ttt_decode.cli import positive_int

    p.add_argument("--logdir", required=True, help="results.jsonl, logging.log and traces go here; rerun to resume")
    p.add_argument("--models", "--model-name", "--model_name", dest="models", required=True,
                   help="comma list of model names, hub aliases, checkpoint dirs or hf:/mamba-ssm: baselines")
    p.add_argument("--inner-nets", "--inner_net", "--inner-net", "--inner_nets", dest="inner_nets", default="",
                   help="comma list; each model runs the ones of its kind (mlp_* for TTT, mamba_* for Mamba, "
                        "attn_* for Transformers), its default if none applies")
    p.add_argument("--batches", "--batch", dest="batches", required=True, help="comma list of batch sizes")
    p.add_argument("--genlens", "--genlen", dest="genlens", default="128", help="comma list of decode lengths (default 128)")
    p.add_argument("--promptlen", type=positive_int, default=1, help="prompt tokens (default 1)")
    p.add_argument("--mode", choices=("prefill", "decode", "prefill_decode"), default="decode")
    p.add_argument("--dtype", default="float16", help="weight dtype (default float16)")
    p.add_argument("--state-dtype", "--state_dtype", dest="state_dtype", default=None, help="state dtype (model default)")
    p.add_argument("--use_compile", "--use-compile", dest="use_compile", action="store_true")
    p.add_argument("--no_cg", "--no-cg", dest="no_cg", action="store_true")
    p.add_argument("--repeats", type=positive_int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--gpus", default=None, help="comma list of GPU ids: one worker per GPU, cells spread over them")
    p.add_argument("--cell-timeout", dest="cell_timeout", type=float, default=1800,
                   help="seconds a cell may take before it is recorded as timeout (default 1800)")
    p.add_argument("--max-memory-gb", dest="max_memory_gb", type=float, default=None,
                   help="memory the estimate compares against (default: the GPU's; none on CPU)")
    p.add_argument("--cell-mem-limit-gb", dest="cell_mem_limit_gb", type=float, default=None,
                   help="CPU cells only: cap each cell process's address space, so a too-large cell fails "
                        "with an allocation error (recorded oom) instead of exhausting the machine")
    p.add_argument("--calibration", default=None, help="roofline JSON passed to every cell")
    p.add_argument("--wandb", action="store_true", help="each cell logs to wandb (offline unless WANDB_MODE says)")
    p.add_argument("--dry-run", dest="dry_run", action="store_true", help="list the cells and exit")


def main(args) -> int:
    cells = plan(args)
    if args.dry_run:
        recorded = Sweep(args).recorded_ids()
        for c in cells:
            mark = "recorded" if c["cell_id"] in recorded else "todo"
            print(f"{mark:>8}  {c['model']} {c['inner_net'] or '-'} B={c['batch']} gen={c['genlen']} ({c['cell_id']})")
        return 0
    counts = Sweep(args).run(cells)
    return 0 if not counts.get("error") and not counts.get("killed") else 1
