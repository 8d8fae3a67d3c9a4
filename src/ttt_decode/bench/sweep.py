"""`ttt-decode sweep`: models x inner nets x batch sizes x generation lengths, one process per cell.

Each cell runs `ttt-decode bench` in its own process, so an out-of-memory cell (or a crash) takes
down only itself: the cell writes an `oom` / `error` record, or, if its process dies without one
(killed, time limit), the sweep writes it (`killed` / `timeout`). Before running, a cell whose
estimated memory (weights + state x batch + logits, from the config, nothing allocated) is over the
device's memory (GPU memory on CUDA, RAM on CPU, or --max-memory-gb) is recorded as `oom` with reason
"estimate". `--gpus 0,1,...` runs one worker per GPU; each cell's process sees exactly one GPU
(CUDA_VISIBLE_DEVICES) and its record names it.

Every cell ends up recorded exactly once per run that owns it:
- A sweep resumes: a cell already in `<logdir>/results.jsonl` is skipped, unless `--retry` names the
  status of its latest record (error, timeout, killed, oom); `report` then shows the newest record.
- One sweep per logdir: the sweep holds an exclusive lock (`flock` on `<logdir>/.sweep/lock`); a
  second sweep into the same logdir is refused at once (exit code 3) with the first one's pid.
- Each cell's process runs in its own session (process group), holding the lock of its cell
  (`<logdir>/.sweep/cell-<id>.lock`, passed to it open and locked) for as long as it lives; its
  output goes to `<logdir>/.sweep/cell-<id>.log`. On SIGTERM, SIGINT or SIGHUP the sweep stops its
  running cells (SIGTERM to each group, SIGKILL after a grace period), records nothing for them and
  exits 128 + the signal number; a rerun runs them again. A sweep killed with SIGKILL cannot stop its
  cells: the rerun finds such a cell's lock still held, does not start the cell a second time, waits
  for that process to end (killing it at --cell-timeout from its start) and takes its record.
- Checked before any cell runs: the flags, the models and inner nets (built on the meta device), the
  device, the --calibration file, and that the logdir can be written. A record or log that cannot be
  written later (disk full) stops the sweep with exit code 4, never a silent success.

Exit codes are computed from the latest record of every cell of the plan, so a rerun with nothing
left to do exits like the run that recorded the cells (EXIT_CODES).

Compiled kernels are shared between cells: every cell's process gets TORCHINDUCTOR_CACHE_DIR and
TRITON_CACHE_DIR under `--compile-cache` (default `<logdir>/.compile-cache/{inductor,triton}`;
`none`: the libraries' own defaults), each unless the user's environment already sets it, so the
second and later cells reuse what the first one compiled; records name them (`compile_cache`).

`--backend ray` runs each locked cell's `ttt-decode bench` process inside a Ray task instead, on any
node of a cluster (bench/ray_backend.py; Sweep.remote); what the cell wrote comes back to this
process, which stays the only writer of the records, so the above holds for it too.
"""

from __future__ import annotations

import fcntl
import itertools
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time

from ttt_decode import registry
from ttt_decode.bench.records import (
    RESULTS,
    append_jsonl,
    cell_id,
    log_line,
    prepare_logdir,
    read_records,
    unreadable_note,
)
from ttt_decode.errors import RecordWriteError, UserError
from ttt_decode.provenance import provenance

EXIT_OK, EXIT_FAILED_CELLS, EXIT_BAD_INPUT, EXIT_BUSY, EXIT_WRITE_FAILED = 0, 1, 2, 3, 4
EXIT_CODES = """exit codes, computed from the latest record of every cell (the same on a first run and on a
rerun): 0 every cell is recorded ok or oom; 1 every cell is recorded, some as error, timeout or killed
(--retry runs them again); 2 bad input or an unusable logdir, refused before any cell ran; 3 another
sweep is running in this logdir (refused, nothing ran); 4 a record or log could not be written (disk
full, permissions): the sweep stopped, a rerun resumes; 128+N stopped by signal N (130 Ctrl-C, 143
SIGTERM): its running cells were stopped and not recorded, a rerun runs them"""
FAILED = ("error", "timeout", "killed")
RETRYABLE = FAILED + ("oom",)
STATE_DIR = ".sweep"
# --compile-cache's default, under the logdir, and the variable of each cache below it.
COMPILE_CACHE_DIR = ".compile-cache"
COMPILE_CACHE_VARS = {"inductor": "TORCHINDUCTOR_CACHE_DIR", "triton": "TRITON_CACHE_DIR"}
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
# Seconds a cell has to exit after SIGTERM before it gets SIGKILL; how often waits look around.
GRACE_S = 10.0
POLL_S = 0.2


class LogdirBusy(Exception):
    """Another sweep holds the logdir's lock."""


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


def parse_retry(text: str | None) -> set[str]:
    """--retry error,timeout,killed (any subset; oom too) -> the statuses whose cells run again."""
    chosen = set(_split(text))
    unknown = sorted(chosen - set(RETRYABLE))
    if unknown:
        raise UserError(f"--retry {text}: unknown status {', '.join(unknown)}; give a comma list of "
                        f"{', '.join(RETRYABLE)}")
    return chosen


def compile_cache_env(args, environ=None) -> dict[str, str]:
    """{variable: directory} the sweep sets for every cell: TORCHINDUCTOR_CACHE_DIR and TRITON_CACHE_DIR
    under --compile-cache (default <logdir>/.compile-cache), absolute, each only where environ (the
    sweep's) leaves it unset or empty; {} with --compile-cache none."""
    environ = os.environ if environ is None else environ
    choice = getattr(args, "compile_cache", None)
    if choice is not None and not choice.strip():
        raise UserError("--compile-cache is empty; give a directory for the compiled-kernel caches, or none")
    if choice is not None and choice.strip().lower() == "none":
        return {}
    root = os.path.abspath(choice or os.path.join(args.logdir, COMPILE_CACHE_DIR))
    return {var: os.path.join(root, name) for name, var in COMPILE_CACHE_VARS.items() if not environ.get(var)}


def prepare_compile_cache(cache_env: dict[str, str]) -> None:
    """Create the cache directories before any cell runs: one UserError if one cannot be."""
    for path in cache_env.values():
        if os.path.exists(path) and not os.path.isdir(path):
            raise UserError(f"--compile-cache: {path} is a file, not a directory; give another --compile-cache "
                            "directory, or none")
        try:
            os.makedirs(path, exist_ok=True)
        except OSError as e:
            raise UserError(f"--compile-cache: cannot create {path} ({e.strerror or e}); give a writable "
                            "--compile-cache directory, or none") from None
        if not os.access(path, os.W_OK | os.X_OK):
            raise UserError(f"--compile-cache: {path} is not writable; fix its permissions or give another "
                            "--compile-cache directory, or none")


def cell_compile_cache(cache_env: dict[str, str], environ=None) -> dict[str, str | None]:
    """The record's compile_cache for a cell given cache_env: each cache's directory as the cell sees it
    (null: unset, the library's default)."""
    environ = os.environ if environ is None else environ
    return {name: cache_env.get(var) or environ.get(var) or None for name, var in COMPILE_CACHE_VARS.items()}


def _inner_nets_for(model: str, inner_nets: list[str]) -> list[str | None]:
    """Inner nets that apply to a model: those of its family in the registry (TTT, Mamba, Transformer)."""
    from ttt_decode.configs import ALIASES, CONFIGS

    name = model.split(":", 1)[1] if ":" in model and not os.path.isdir(model) else model
    kind = CONFIGS[ALIASES.get(name, name)].kind if ALIASES.get(name, name) in CONFIGS else None
    if model.startswith(("hf:", "mamba-ssm:")):
        return [None]
    # A name of no family is a user error (not silently dropped); another family's are for other models.
    families = {n: registry.get(n, None if n in registry.IMPLEMENTATIONS else kind).family for n in inner_nets}
    chosen = [n for n in inner_nets if families[n] == kind] if kind else inner_nets
    return chosen or [None]


def _lengths(text: str) -> list[int]:
    """A comma list of token counts, each an integer or one with a k suffix (1k = 1024): 1,1k,4k,32k."""
    values = []
    for t in _split(text):
        try:
            values.append(int(t[:-1]) * 1024 if t.lower().endswith("k") else int(t))
        except ValueError:
            raise UserError(f"expected a comma list of token counts such as 1,1k,4k,32k (k = 1024), got {text!r}") \
                from None
    if not values or min(values) < 1:
        raise UserError(f"token counts must be positive, got {text!r}")
    return values


DEFAULT_STATE = "default"  # in --state-dtype's list: the model's own state dtype (no --state-dtype for the cell)


def _state_dtypes(text: str | None) -> list[str | None]:
    """--state-dtype's comma list -> the cells' state dtypes (None: the model's own), checked by name."""
    from ttt_decode.dtypes import DTYPES

    if text is None:
        return [None]
    names = _split(text)
    bad = [n for n in names if n != DEFAULT_STATE and n not in DTYPES]
    if not names or bad:
        raise UserError(f"--state-dtype {text!r}: unknown {', '.join(bad) or 'empty list'}; give a comma list of "
                        f"float16, bfloat16, float32, float64 or {DEFAULT_STATE} (the model's own), "
                        "e.g. float32,float16")
    out = [None if n == DEFAULT_STATE else n for n in names]
    return list(dict.fromkeys(out))  # a name given twice is one cell


def plan(args) -> list[dict]:
    cells = []
    grid = itertools.product(_split(args.models), _state_dtypes(args.state_dtype), _lengths(args.promptlens),
                             _ints(args.batches), _ints(args.genlens))
    for model, state_dtype, promptlen, batch, genlen in grid:
        for inner in _inner_nets_for(model, _split(args.inner_nets)):
            c = {"model": model, "inner_net": inner, "dtype": args.dtype, "state_dtype": state_dtype,
                 "mode": args.mode, "batch": batch, "promptlen": promptlen, "genlen": genlen,
                 "compile": args.use_compile, "cuda_graph": not args.no_cg}
            c["cell_id"] = cell_id(c)
            cells.append(c)
    if not cells:
        raise UserError("the sweep has no cells: give --models and --batches")
    return cells


def _is_config_name(model: str) -> bool:
    return not (os.path.isdir(model) or ":" in model)


def check_cells(cells: list[dict], device) -> dict:
    """Build every (model, inner net, dtype) of the plan on the meta device (nothing allocated): a bad
    name or an inner net of the wrong kind is one UserError before any cell runs. Returns the models."""
    from ttt_decode.models import load_model
    from ttt_decode.models.common import check_triton_usable

    models = {}
    for c in cells:
        key = (c["model"], c["inner_net"], c["dtype"])
        if key in models or not _is_config_name(c["model"]):
            continue
        check_triton_usable(c["inner_net"], device)
        models[key] = load_model(c["model"], inner_net=c["inner_net"], dtype=c["dtype"], device="meta")
    return models


def estimate_memory_gb(c: dict, models: dict | None = None) -> float | None:
    """decode.engine.estimate_bytes of a cell, GB, on its meta model; None for checkpoints and baselines."""
    from ttt_decode.decode.engine import estimate_bytes
    from ttt_decode.dtypes import parse_dtype
    from ttt_decode.models import load_model

    if not _is_config_name(c["model"]):
        return None
    key = (c["model"], c["inner_net"], c["dtype"])
    model = (models or {}).get(key) or load_model(c["model"], inner_net=c["inner_net"], dtype=c["dtype"],
                                                  device="meta")
    state_dtype = parse_dtype(c["state_dtype"]) if c["state_dtype"] else None
    est = estimate_bytes(model, c["batch"], state_dtype, max_seq_len=c["promptlen"] + c["genlen"] + 1,
                         prompt_len=c["promptlen"], last_only=True)  # as the cell prefills (bench.cell)
    return est["total"] / 2**30


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


def _killpg(pgid: int, sig: int) -> None:
    """Signal a cell's whole process group (its pid: each cell leads its own session)."""
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _try_flock(path: str) -> int | None:
    """An fd of path holding its exclusive lock, or None if another process holds it."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise RecordWriteError(f"cannot write {path}: {e.strerror or e}; fix the permissions or give another "
                               "--logdir") from e
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _write_holder(fd: int, info: dict) -> None:
    """Who holds a lock (pid, start time), for the messages of whoever finds it held.

    Best effort: the lock itself is what protects the cell; without this note only the messages (and the
    timeout of an adopted cell, then counted from when it was found) lose the pid and start time."""
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
    except OSError:
        pass


def _read_holder(path: str) -> dict:
    try:
        with open(path) as fh:
            info = json.load(fh)
        return info if isinstance(info, dict) else {}
    except (OSError, ValueError):
        return {}


def lock_logdir(logdir: str) -> int:
    """The logdir's sweep lock (an fd to keep open), or LogdirBusy naming the sweep that holds it."""
    path = os.path.join(logdir, STATE_DIR, "lock")
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
    except OSError as e:
        raise RecordWriteError(f"cannot write {path}: {e.strerror or e}; fix the permissions or give another "
                               "--logdir") from e
    fd = _try_flock(path)
    if fd is None:
        holder = _read_holder(path)
        raise LogdirBusy(f"another sweep (pid {holder.get('pid', '?')}, started {holder.get('time', '?')}) is "
                         f"running in {logdir}; wait for it to finish (rerunning then resumes) or give another "
                         "--logdir")
    from ttt_decode.provenance import now

    _write_holder(fd, {"pid": os.getpid(), "time": now()})
    return fd


class Sweep:
    def __init__(self, args, retry: set[str] = frozenset(), models: dict | None = None, remote=None,
                 cache_env: dict[str, str] | None = None):
        self.args = args
        # Where the cells run when not on this machine: ray_backend.RayCells (--backend ray), else None.
        self.remote = remote
        self.nodes: dict[str, dict | None] = {}  # cell_id -> the Ray node its task ran on
        self.retry = set(retry)
        self.models = models or {}
        self.path = os.path.join(args.logdir, RESULTS)
        self.state_dir = os.path.join(args.logdir, STATE_DIR)
        self.lock = threading.Lock()
        self.done = 0
        self.started = time.time()
        self.running: dict[str, subprocess.Popen] = {}  # cell_id -> its live process
        self.stop_signal: int | None = None
        self.fatal: BaseException | None = None
        # TORCHINDUCTOR_CACHE_DIR / TRITON_CACHE_DIR for every cell (those the user did not set).
        self.cache_env = compile_cache_env(args) if cache_env is None else cache_env

    # ---- records
    def records_by_cell(self) -> tuple[dict[str, list[dict]], list[int]]:
        """{cell_id: its bench records, oldest first}, and the unreadable line numbers of the file."""
        records, bad = read_records(self.path)
        by_cell: dict[str, list[dict]] = {}
        for r in records:
            if r.get("kind") == "bench" and r.get("cell_id"):
                by_cell.setdefault(r["cell_id"], []).append(r)
        return by_cell, bad

    def recorded_ids(self) -> set[str]:
        return set(self.records_by_cell()[0])

    def _new_record(self, c: dict, seen: int) -> dict | None:
        """The latest record of cell c if it has more than the `seen` it had when the sweep planned."""
        mine = self.records_by_cell()[0].get(c["cell_id"], [])
        return mine[-1] if len(mine) > seen else None

    def record_without_running(self, c: dict, status: str, message: str, gpu: str | None = None) -> None:
        rec = {"kind": "bench", **provenance("cpu" if self.args.device == "cpu" else None), "status": status,
               "error": message, "compile_cache": cell_compile_cache(self.cache_env), **{k: v for k, v in c.items()},
               **self.placement(c, gpu)}
        append_jsonl(self.path, rec)
        log_line(self.args.logdir, f"{c['model']} {c['inner_net'] or ''} B={c['batch']}: {status.upper()} {message}")

    def placement(self, c: dict, gpu: str | None) -> dict:
        """Where cell c ran, for the records this process writes for it: its GPU, and its Ray node."""
        if self.remote is None:
            return {"gpu_assigned": gpu}
        return {"gpu_assigned": gpu, "ray_node": self.nodes.get(c["cell_id"])}

    # ---- one cell
    def _cell_file(self, c: dict, suffix: str) -> str:
        return os.path.join(self.state_dir, f"cell-{c['cell_id']}.{suffix}")

    def run_cell(self, c: dict, gpu: str | None, seen: int = 0) -> str | None:
        """Run cell c (or wait for the process an earlier sweep left running for it); its status, or
        None when the sweep was stopped before the cell ended (nothing recorded)."""
        fd = _try_flock(self._cell_file(c, "lock"))
        if fd is None:
            return self._adopt(c, gpu, seen)
        try:
            # A record that landed between planning and locking (an earlier process that just ended).
            new = self._new_record(c, seen)
            if new is not None:
                return new["status"]
            return self._spawn_and_wait(c, gpu, seen, fd)
        finally:
            os.close(fd)

    def _spawn_and_wait(self, c: dict, gpu: str | None, seen: int, lock_fd: int) -> str | None:
        if self.remote is not None:
            return self._run_remote(c, seen)
        env = dict(os.environ)
        env.setdefault("PYTHONUNBUFFERED", "1")
        src = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
        env.update(self.cache_env)
        if gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = gpu
            env["TTT_DECODE_GPU_ASSIGNED"] = gpu  # the cell's record names the GPU the sweep gave it
        limiter = _memory_limiter(self.args.cell_mem_limit_gb) if self.args.device == "cpu" else None
        log_path = self._cell_file(c, "log")
        # Output to a file, not a pipe: a cell that outlives a killed sweep must not die writing to it.
        try:
            out = open(log_path, "w")
        except OSError as e:
            raise RecordWriteError(f"cannot write {log_path}: {e.strerror or e}; free disk space or fix the "
                                   "permissions, then rerun") from e
        with out:
            proc = subprocess.Popen(_bench_argv(c, self.args), env=env, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True, pass_fds=(lock_fd,),
                                    preexec_fn=limiter)
        _write_holder(lock_fd, {"pid": proc.pid, "started": time.time(), "sweep_pid": os.getpid()})
        with self.lock:
            self.running[c["cell_id"]] = proc
        try:
            how = self._wait(proc)
        finally:
            with self.lock:
                self.running.pop(c["cell_id"], None)
        log_line(self.args.logdir, f"cell {c['cell_id']} exit {proc.returncode}\n{_tail(log_path)}")
        return self._outcome(c, gpu, seen, proc.returncode, how, log_path)

    def _run_remote(self, c: dict, seen: int) -> str | None:
        """Cell c as a Ray task (self.remote), this process holding its lock: the records the cell wrote on
        its node are appended here, then its end is mapped to a status as for a local cell."""
        limit = self.args.cell_mem_limit_gb if self.args.device == "cpu" else None
        run = self.remote.run(_bench_argv(c, self.args), self.args.cell_timeout, limit,
                              stopped=lambda: self.stop_signal is not None, cache_env=self.cache_env)
        if run is None:
            return None
        self.nodes[c["cell_id"]] = run.ray_node
        if run.failed:
            self.record_without_running(c, run.failed, run.message)
            return run.failed
        log_path = self._cell_file(c, "log")
        try:
            with open(log_path, "wb") as fh:
                fh.write(run.output)
        except OSError as e:
            raise RecordWriteError(f"cannot write {log_path}: {e.strerror or e}; free disk space or fix the "
                                   "permissions, then rerun") from e
        for rec in run.records:
            append_jsonl(self.path, {**rec, **self.placement(c, run.gpu_assigned)})
        torn = f", {run.torn_lines} torn line(s) of its results skipped" if run.torn_lines else ""
        log_line(self.args.logdir, f"cell {c['cell_id']} exit {run.rc} on Ray node {run.ray_node['ip']}{torn}\n"
                                   f"{_tail(log_path)}")
        return self._outcome(c, run.gpu_assigned, seen, run.rc, run.how, log_path)

    def _wait(self, proc: subprocess.Popen) -> str | None:
        """Until proc ends: None, 'timeout' (killed at --cell-timeout) or 'stopped' (the sweep got a signal)."""
        deadline = time.monotonic() + self.args.cell_timeout
        while True:
            try:
                proc.wait(timeout=POLL_S)
                # Ended by the signal handler's SIGTERM (the flag is set before any cell is signalled).
                return "stopped" if self.stop_signal is not None else None
            except subprocess.TimeoutExpired:
                pass
            if self.stop_signal is not None:
                self._stop(proc)
                return "stopped"
            if time.monotonic() > deadline:
                _killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                return "timeout"

    def _stop(self, proc: subprocess.Popen) -> None:
        _killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=GRACE_S)
        except subprocess.TimeoutExpired:
            _killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def _outcome(self, c: dict, gpu: str | None, seen: int, rc: int, how: str | None, log_path: str) -> str | None:
        new = self._new_record(c, seen)
        if new is not None:
            return new["status"]
        if how == "stopped":
            return None
        if how == "timeout":
            self.record_without_running(c, "timeout", f"no result within --cell-timeout {self.args.cell_timeout:g} s",
                                        gpu)
            return "timeout"
        last = _tail(log_path, lines=1) or "no output"
        if rc == EXIT_WRITE_FAILED:
            raise RecordWriteError(f"cell {c['cell_id']} could not write its record ({last}); the sweep stopped, "
                                   "rerun to resume")
        if rc < 0:
            self.record_without_running(c, "killed", f"cell process killed by signal {-rc}", gpu)
            return "killed"
        self.record_without_running(c, "error", f"cell process exited {rc} without a record: {last}", gpu)
        return "error"

    def _adopt(self, c: dict, gpu: str | None, seen: int) -> str | None:
        """Cell c's lock is held: a process started for it by an earlier (killed) sweep still runs. Wait
        for it rather than run the cell beside it; kill it at --cell-timeout from its start."""
        path = self._cell_file(c, "lock")
        holder = _read_holder(path)
        pid, started = holder.get("pid"), holder.get("started") or time.time()
        print(f"cell {_label(c, gpu)} ({c['cell_id']}) is still running from an earlier sweep (pid {pid or '?'}): "
              "waiting for it instead of starting it again", flush=True)
        how = None
        while (fd := _try_flock(path)) is None:
            if self.stop_signal is not None:
                return None
            if how is None and time.time() > started + self.args.cell_timeout and pid:
                _killpg(int(pid), signal.SIGKILL)
                how = "timeout"
            time.sleep(POLL_S)
        try:
            log_line(self.args.logdir, f"cell {c['cell_id']} (started by an earlier sweep, pid {pid}) ended\n"
                                       f"{_tail(self._cell_file(c, 'log'))}")
            new = self._new_record(c, seen)
            if new is not None:
                return new["status"]
            if how == "timeout":
                msg = f"no result within --cell-timeout {self.args.cell_timeout:g} s (started by an earlier sweep)"
                self.record_without_running(c, "timeout", msg, gpu)
                return "timeout"
            self.record_without_running(c, "killed", f"the process an earlier sweep started for this cell (pid {pid}) "
                                                     "ended without a record", gpu)
            return "killed"
        finally:
            os.close(fd)

    # ---- signals
    def _on_signal(self, signum, frame) -> None:
        """Stop: SIGTERM to every running cell's group (SIGKILL on a second signal); workers see the flag."""
        del frame
        again = self.stop_signal is not None
        self.stop_signal = self.stop_signal or signum
        for proc in list(self.running.values()):
            _killpg(proc.pid, signal.SIGKILL if again else signal.SIGTERM)

    def _install_handlers(self) -> dict:
        if threading.current_thread() is not threading.main_thread():
            return {}
        return {s: signal.signal(s, self._on_signal) for s in STOP_SIGNALS}

    # ---- the sweep
    def slots(self) -> list[str | None]:
        """One worker thread per entry, each running one cell at a time: the --gpus, or one slot; with
        Ray, as many as the cluster can run at once (Ray gives each its GPU)."""
        if self.remote is not None:
            return [None] * self.remote.slots
        return _split(self.args.gpus) or [None]

    def _progress(self, total: int):
        try:
            from tqdm import tqdm

            return tqdm(total=total, unit="cell", dynamic_ncols=True)
        except ImportError:
            return None

    def _estimate(self, todo: list[dict], device) -> list[dict]:
        """Record as oom the cells whose estimate is over the memory; the others, to run."""
        from ttt_decode.decode.engine import MEMORY_MARGIN, device_memory_bytes

        if self.remote is not None and not self.args.max_memory_gb:
            # The nodes' devices are not this machine's: each cell checks its estimate where it runs.
            return todo
        limit = self.args.max_memory_gb or device_memory_bytes(device) / 2**30
        where = "--max-memory-gb" if self.args.max_memory_gb else ("the GPU" if device.type == "cuda" else "RAM")
        runnable = []
        for c in todo:
            est = estimate_memory_gb(c, self.models)
            if est is not None and est * (1 + MEMORY_MARGIN) > limit:
                self.record_without_running(c, "oom", f"estimate: needs about {est:.3g} GB, {where} has {limit:.3g} GB")
            else:
                runnable.append(c)
        return runnable

    def run(self, cells: list[dict], device) -> int:
        """Run what is left of the plan; the exit code (EXIT_CODES)."""
        by_cell, bad = self.records_by_cell()
        if bad:
            print(f"sweep: {unreadable_note(self.path, bad)}", flush=True)
        seen = {c["cell_id"]: len(by_cell.get(c["cell_id"], [])) for c in cells}
        todo = [c for c in cells if not by_cell.get(c["cell_id"]) or by_cell[c["cell_id"]][-1]["status"] in self.retry]
        skipped = len(cells) - len(todo)
        retried = sum(1 for c in todo if by_cell.get(c["cell_id"]))
        if self.remote is not None:
            print(f"sweep: {self.remote.describe()}", flush=True)
        print(f"sweep: {len(cells)} cells, {skipped} already recorded, {len(todo)} to run"
              + (f" ({retried} retried: --retry {','.join(sorted(self.retry))})" if retried else "")
              + f" -> {self.path}", flush=True)
        runnable = self._estimate(todo, device)
        work = queue.Queue()
        for c in runnable:
            work.put(c)
        bar = self._progress(len(runnable))
        threads = [threading.Thread(target=self._worker, args=(g, work, bar, len(runnable), seen), daemon=True)
                   for g in self.slots()]
        previous = self._install_handlers()
        try:
            for t in threads:
                t.start()
            for t in threads:
                while t.is_alive():
                    t.join(0.5)
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
            if bar is not None:
                bar.close()
        return self._finish(cells)

    def _worker(self, gpu, work: queue.Queue, bar, total: int, seen: dict) -> None:
        while self.stop_signal is None and self.fatal is None:
            try:
                c = work.get_nowait()
            except queue.Empty:
                return
            label = _label(c, gpu)
            with self.lock:
                if bar is not None:
                    bar.set_description(label)
                else:
                    print(f"[{self.done + 1}/{total}] {label} ...", flush=True)
            try:
                status = self.run_cell(c, gpu, seen[c["cell_id"]])
            except BaseException as e:  # noqa: BLE001 - a failed write (or a bug) stops the sweep, never lost
                with self.lock:
                    self.fatal = self.fatal or e
                return
            if status is None:
                return
            with self.lock:
                self.done += 1
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix_str(status)
                else:
                    eta = (time.time() - self.started) / self.done * (total - self.done)
                    print(f"[{self.done}/{total}] {label}: {status} (ETA {eta:.0f} s)", flush=True)

    def _finish(self, cells: list[dict]) -> int:
        took = f"{time.time() - self.started:.0f} s"
        if self.fatal is not None:
            if isinstance(self.fatal, RecordWriteError):
                print(f"sweep: error: {self.fatal}", file=sys.stderr, flush=True)
                return EXIT_WRITE_FAILED
            raise self.fatal
        if self.stop_signal is not None:
            name = signal.Signals(self.stop_signal).name
            print(f"sweep stopped by {name} after {took}: running cells were stopped and not recorded; rerun the "
                  "same command to resume", file=sys.stderr, flush=True)
            return 128 + self.stop_signal
        by_cell, _ = self.records_by_cell()
        counts: dict[str, int] = {}
        for c in cells:
            mine = by_cell.get(c["cell_id"])
            status = mine[-1]["status"] if mine else "missing"
            counts[status] = counts.get(status, 0) + 1
        print(f"sweep done in {took}: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
              + f" (latest record of each of the {len(cells)} cells)", flush=True)
        if any(counts.get(s) for s in FAILED + ("missing",)):
            return EXIT_FAILED_CELLS
        return EXIT_OK


def _label(c: dict, gpu: str | None) -> str:
    prompt = f" prompt={c['promptlen']}" if c["promptlen"] != 1 else ""
    state = f" state={c['state_dtype']}" if c.get("state_dtype") else ""
    where = f" gpu{gpu}" if gpu else ""
    return f"{c['model']} {c['inner_net'] or ''}{state} B={c['batch']}{prompt} gen={c['genlen']}{where}"


def _tail(path: str, lines: int = 40) -> str:
    """The last lines of a cell's output file ('' if unreadable)."""
    try:
        with open(path, errors="replace") as fh:
            text = fh.read()[-6000:]
    except OSError:
        return ""
    return "\n".join(text.strip().splitlines()[-lines:])


def add_arguments(p):
    from ttt_decode.cli_args import device_arg, positive_float, positive_int

    p.add_argument("--logdir", required=True, help="results.jsonl, logging.log and traces go here; rerun to resume "
                   "(one sweep at a time: a second one into the same logdir is refused, exit code 3)")
    p.add_argument("--models", "--model-name", "--model_name", dest="models", required=True,
                   help="comma list of model names, hub aliases, checkpoint dirs or hf:/mamba-ssm: baselines")
    p.add_argument("--inner-nets", "--inner_net", "--inner-net", "--inner_nets", dest="inner_nets", default="",
                   help="comma list; each model runs the ones of its kind (mlp_* for TTT, mamba_* for Mamba, "
                        "attn_* for Transformers), its default if none applies")
    p.add_argument("--batches", "--batch", dest="batches", required=True, help="comma list of batch sizes")
    p.add_argument("--genlens", "--genlen", dest="genlens", default="128",
                   help="comma list of decode lengths (default 128)")
    p.add_argument("--promptlens", "--promptlen", dest="promptlens", default="1",
                   help="comma list of prompt (context) lengths, k = 1024: e.g. 1k,4k,16k,32k for the cost against "
                        "context of a KV-cache Transformer (default 1)")
    p.add_argument("--mode", choices=("prefill", "decode", "prefill_decode"), default="decode")
    p.add_argument("--dtype", default="float16", help="weight dtype (default float16)")
    p.add_argument("--state-dtype", "--state_dtype", dest="state_dtype", default=None,
                   help="comma list of state dtypes (float16, bfloat16, float32, float64, or default: the model's "
                        "own); every model runs each, e.g. float32,float16 for Mamba with fp32 and fp16 SSM state in "
                        "one sweep (default: the model's own)")
    p.add_argument("--use_compile", "--use-compile", dest="use_compile", action="store_true")
    p.add_argument("--no_cg", "--no-cg", dest="no_cg", action="store_true")
    p.add_argument("--repeats", type=positive_int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", type=device_arg, default=None, help="cpu, cuda or cuda:N (default: cuda if available)")
    p.add_argument("--gpus", default=None, help="comma list of GPU ids: one worker per GPU, cells spread over them "
                   "(local backend)")
    p.add_argument("--backend", choices=("local", "ray"), default="local",
                   help="local: cells run on this machine (default); ray: each cell is a Ray task asking for one "
                        "GPU (one CPU slot with --device cpu or on a cluster without GPUs); needs the ray extra")
    p.add_argument("--ray-address", "--ray_address", dest="ray_address", default=None,
                   help="with --backend ray: the cluster to join, auto (the one `ray start` began on this machine) "
                        "or HOST:PORT (default: $RAY_ADDRESS, else a Ray started here for the sweep)")
    p.add_argument("--cell-timeout", dest="cell_timeout", type=positive_float, default=1800,
                   help="seconds a cell may take before it is killed and recorded as timeout (default 1800)")
    p.add_argument("--retry", default="", help="comma list of statuses (error, timeout, killed, oom) whose cells run "
                   "again: a cell whose latest record has one of them is rerun; `report` shows the newest record")
    p.add_argument("--max-memory-gb", dest="max_memory_gb", type=positive_float, default=None,
                   help="memory the estimate compares against (default: the GPU's total memory on CUDA, the "
                        "machine's RAM on CPU); cells estimated over it are recorded as oom without running")
    p.add_argument("--cell-mem-limit-gb", dest="cell_mem_limit_gb", type=positive_float, default=None,
                   help="CPU cells only: cap each cell process's address space, so a too-large cell fails "
                        "with an allocation error (recorded oom) instead of exhausting the machine")
    p.add_argument("--compile-cache", "--compile_cache", dest="compile_cache", default=None,
                   help="directory of torch.compile's (inductor's) and Triton's kernel caches, shared by every cell "
                        "so that later cells reuse what the first one compiled (default <logdir>/.compile-cache; "
                        "none: the libraries' defaults); TORCHINDUCTOR_CACHE_DIR or TRITON_CACHE_DIR set by you win")
    p.add_argument("--calibration", default=None, help="roofline JSON passed to every cell (checked first)")
    p.add_argument("--wandb", action="store_true", help="each cell logs to wandb (offline unless WANDB_MODE says)")
    p.add_argument("--dry-run", dest="dry_run", action="store_true", help="list the cells and exit")
    p.epilog = EXIT_CODES


def _dry_run(args, cells: list[dict], retry: set[str]) -> int:
    if os.path.exists(args.logdir) and not os.path.isdir(args.logdir):
        raise UserError(f"--logdir {args.logdir} is a file, not a directory; give a directory")
    by_cell, _ = Sweep(args).records_by_cell()
    for c in cells:
        mine = by_cell.get(c["cell_id"])
        mark = "todo" if not mine else ("retry" if mine[-1]["status"] in retry else mine[-1]["status"])
        state = f" state={c['state_dtype']}" if c["state_dtype"] else ""
        print(f"{mark:>8}  {c['model']} {c['inner_net'] or '-'}{state} B={c['batch']} prompt={c['promptlen']} "
              f"gen={c['genlen']} ({c['cell_id']})")
    return EXIT_OK


def main(args) -> int:
    from ttt_decode.dtypes import resolve_device
    from ttt_decode.provenance import gpu_name

    # Read first: building a model (check_cells) makes inductor set TORCHINDUCTOR_CACHE_DIR in this
    # process, which must not pass for the user's choice. A bad --compile-cache is refused here too.
    cache_env = compile_cache_env(args)
    cells = plan(args)
    retry = parse_retry(args.retry)
    if args.ray_address and args.backend != "ray":
        raise UserError(f"--ray-address {args.ray_address} is for the Ray backend: add --backend ray")
    if args.backend == "ray":
        return _main_ray(args, cells, retry, cache_env)
    device = resolve_device(args.device)
    if args.dry_run:
        return _dry_run(args, cells, retry)
    return run_checked(args, cells, retry, device, gpu_name(device), cache_env=cache_env)


def _main_ray(args, cells: list[dict], retry: set[str], cache_env: dict[str, str]) -> int:
    """--backend ray: Ray is checked first, then joined (or started) to learn the cells' device and slots."""
    from ttt_decode.bench import ray_backend

    ray_backend.check_flags(args)
    if args.dry_run:
        return _dry_run(args, cells, retry)
    remote = ray_backend.connect(args)
    try:
        # The --calibration file's GPU is checked by each cell on its node; here, only its form.
        return run_checked(args, cells, retry, remote.device, None, remote, cache_env)
    finally:
        remote.close()


def run_checked(args, cells: list[dict], retry: set[str], device, device_name: str | None, remote=None,
                cache_env: dict[str, str] | None = None) -> int:
    """Check the cells and the --calibration file (measured on device_name; None: its form only), take
    the logdir's lock, then run the sweep (its cells on remote, else here, with the compiled-kernel
    caches cache_env, default compile_cache_env(args)); the exit code."""
    cache_env = compile_cache_env(args) if cache_env is None else cache_env
    models = check_cells(cells, device)
    if args.calibration:
        from ttt_decode.bench.roofline import read_calibration

        read_calibration(args.calibration, device_name)
    prepare_logdir(args.logdir)
    if remote is None:
        # On Ray each task makes them on its node (bench/ray_backend.py).
        prepare_compile_cache(cache_env)
    try:
        lock_fd = lock_logdir(args.logdir)
    except LogdirBusy as e:
        print(f"ttt-decode sweep: error: {e}", file=sys.stderr)
        return EXIT_BUSY
    try:
        return Sweep(args, retry, models, remote, cache_env).run(cells, device)
    finally:
        os.close(lock_fd)
