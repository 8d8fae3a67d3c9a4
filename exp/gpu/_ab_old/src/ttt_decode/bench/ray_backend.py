"""`ttt-decode sweep --backend ray`: the sweep's cells as Ray tasks, on this machine or a cluster.

Each cell is one Ray task asking for one GPU (`num_gpus=1`), or one CPU slot (`num_cpus=1`) with
`--device cpu` or on a cluster without GPUs. The task runs the cell process of the local backend
(`ttt-decode bench`, the sweep's argv for it) in its own session, with a temporary logdir on its
node, and returns what the cell wrote (its results.jsonl lines and output), its exit code and where
it ran (RayCells.run -> CellRun). The sweep (bench/sweep.py, in this process) stays the only writer
of `<logdir>/results.jsonl`: it appends the returned records with `ray_node` and `gpu_assigned`,
then maps a cell that left no record to a status exactly as for a local cell, so resume, `--retry`,
the statuses, the exit codes and `report` are those of the local backend.

How a cell can end without a record of its own:
- `--cell-timeout`: the task kills the cell's process group at the limit, counted from the cell's
  start (not from its time in Ray's queue); the sweep records `timeout`.
- The cell process dies (SIGKILL, a crash): `killed` (signal) or `error` (exit code), as locally.
- The Ray worker dies under its task (killed, its node lost): `killed`. Ray never retries a cell
  (max_retries=0), so a cell that crashes its worker runs once; the cell process dies with its
  worker (PR_SET_PDEATHSIG), so no cell outlives its task. Ray's memory monitor killing the task is
  recorded `oom`.
- The sweep is stopped (SIGTERM, SIGINT, SIGHUP): the running tasks are cancelled (their workers
  are killed, and with them the cells) and nothing is recorded for them, as locally.

The sweep holds each cell's lock (`<logdir>/.sweep/cell-<id>.lock`) while its task runs, as the local
backend's cell process does, so a cell still running from an earlier, killed local sweep is waited
for, never started beside it. A killed sweep takes its cells with it: Ray ends the tasks of a driver
that dies, and each cell process dies with its worker.

Memory: without `--max-memory-gb` the sweep makes no estimate, since it does not know the nodes'
devices; each cell compares its estimate with its own node's device and records `oom` ("estimate")
itself. Ray is imported here only, and this module only when `--backend ray` is asked for.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading

from ttt_decode.bench.records import parse_records
from ttt_decode.errors import MissingPackageError, UserError

INSTALL = 'pip install -e ".[ray]" (or pip install ray)'
# Environment variables of the sweep that reach every cell, wherever it runs (a Ray worker has the
# environment of its node's `ray start`, not the sweep's): ttt-decode's own settings (calibration
# cache, fault injection, commit), Triton's (TRITON_INTERPRET on CPU), inductor's and wandb's.
FORWARDED = ("TTT_DECODE_", "TRITON_", "TORCHINDUCTOR_", "WANDB_")
# Set per task from what Ray assigned, never forwarded.
NOT_FORWARDED = ("TTT_DECODE_GPU_ASSIGNED",)
# The last bytes of a cell's output sent back (the whole output stays small: progress lines and, on
# failure, one traceback).
OUTPUT_BYTES = 256 * 1024
PR_SET_PDEATHSIG = 1
# Seconds to reach a HOST:PORT given as --ray-address (ray.init itself retries for minutes).
CONNECT_S = 10
# How often a wait for a task looks at the sweep's stop flag.
POLL_S = 0.2


def require_ray():
    """The ray module, or a one-line UserError saying how to install it."""
    try:
        import ray
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] != "ray":
            raise UserError(f"--backend ray: cannot import ray ({e}); reinstall it: {INSTALL}") from None
        raise MissingPackageError("ray", "--backend ray", INSTALL) from None
    except ImportError as e:
        raise UserError(f"--backend ray: cannot import ray ({e}); reinstall it: {INSTALL}") from None
    if getattr(ray, "__file__", None) is None:
        # A folder named ray on the path (Ray's own /tmp/ray, from a sweep started in /tmp), not the package.
        where = ", ".join(getattr(ray, "__path__", None) or []) or "?"
        raise UserError(f"--backend ray needs the optional package 'ray', which is not installed (`import ray` "
                        f"found only the folder {where}): {INSTALL}")
    return ray


def check_flags(args) -> None:
    """What --backend ray refuses before anything starts: no Ray installed, flags of the local backend."""
    require_ray()
    if args.gpus:
        raise UserError("--gpus is for the local backend; with --backend ray, Ray gives each cell one GPU of the "
                        "cluster: leave --gpus out")
    if args.device and ":" in args.device:
        raise UserError(f"--device {args.device}: with --backend ray, Ray picks each cell's GPU; give --device cuda")


@dataclasses.dataclass
class CellRun:
    """How a cell's task ended: what the cell wrote on its node and how its process ended, or (failed)
    the status of a task that gave nothing back."""

    records: list[dict]
    torn_lines: int
    output: bytes
    rc: int | None
    how: str | None  # None, or "timeout": the task killed the cell at --cell-timeout
    ray_node: dict | None  # {"id": node id, "ip": its address}
    gpu_assigned: str | None
    failed: str | None = None  # killed, oom or error: the task died or raised
    message: str = ""


class RayCells:
    """The sweep's Ray session, joined or started by connect(): runs one cell at a time per caller."""

    def __init__(self, ray, started: bool, device_flag: str | None):
        import torch

        self.ray = ray
        self.started = started
        resources = ray.cluster_resources()
        gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 0))
        if device_flag == "cuda" and not gpus:
            self.close()
            raise UserError(f"--device cuda, but the Ray cluster has no GPUs ({cpus} CPUs); give --device cpu, or "
                            "join GPU nodes to the cluster")
        on_gpu = device_flag != "cpu" and gpus > 0
        self.device = torch.device("cuda" if on_gpu else "cpu")
        # Cells in flight at once: what the cluster can hold now (Ray queues the rest anyway).
        self.slots = max(1, gpus if on_gpu else cpus)
        self.task = ray.remote(_cell_task).options(num_gpus=1 if on_gpu else 0, num_cpus=1, max_retries=0)

    def describe(self) -> str:
        return f"Ray backend, {self.slots} {self.device.type.upper()} slot(s) in the cluster"

    def run(self, argv: list[str], timeout_s: float, mem_limit_gb: float | None, stopped,
            cache_env: dict[str, str] | None = None) -> CellRun | None:
        """Run the cell process argv (`python -m ttt_decode.cli bench ...`) as a task, with the compiled-kernel
        cache directories cache_env where its node sets none; None when stopped() turned true first (the
        task cancelled, nothing to record)."""
        cache_env = cache_env or {}
        # A cache variable in cache_env is the sweep's choice, not the user's: this process's own value
        # (inductor sets one when a model is built) is not forwarded over it.
        env = {k: v for k, v in os.environ.items()
               if k.startswith(FORWARDED) and k not in NOT_FORWARDED and k not in cache_env}
        ref = self.task.remote(argv[1:], env, timeout_s, mem_limit_gb, cache_env)
        while not self.ray.wait([ref], timeout=POLL_S)[0]:
            if stopped():
                # Kills the task's worker; its cell process dies with it (PR_SET_PDEATHSIG).
                self.ray.cancel(ref, force=True)
                return None
        try:
            done = self.ray.get(ref)
        except self.ray.exceptions.RayError as e:
            return None if stopped() and isinstance(e, self.ray.exceptions.TaskCancelledError) else self._failed(e)
        records, torn = parse_records(done.pop("results").splitlines(keepends=True))
        return CellRun(records=records, torn_lines=len(torn), **done)

    def _failed(self, e: Exception) -> CellRun:
        """A task that gave nothing back: its worker died, Ray's memory monitor killed it, or it raised."""
        ex = self.ray.exceptions
        what = " ".join(f"{type(e).__name__}: {e}".split())[:500]
        if isinstance(e, ex.OutOfMemoryError):
            status, message = "oom", f"Ray's memory monitor killed the cell's task ({what})"
        elif isinstance(e, ex.RayTaskError):
            status, message = "error", f"the cell's Ray task failed ({what})"
        else:
            status, message = "killed", f"the Ray worker running the cell died ({what})"
        return CellRun([], 0, b"", None, None, None, None, failed=status, message=message)

    def close(self) -> None:
        if self.started:
            self.ray.shutdown()


def connect(args) -> RayCells:
    """Join the cluster at --ray-address, or start Ray on this machine; reuse a session already open in this
    process (a test's, a notebook's). A cluster that cannot be joined is one UserError."""
    ray = require_ray()
    if ray.is_initialized():
        return RayCells(ray, started=False, device_flag=args.device)
    # "local": a new Ray on this machine, never one found running here by chance (ray.init's own default).
    address = args.ray_address or os.environ.get("RAY_ADDRESS") or "local"
    _check_reachable(address)
    in_main = threading.current_thread() is threading.main_thread()
    # ray.init replaces SIGTERM's handler (sys.exit); the sweep keeps the default until it installs its own.
    sigterm = signal.getsignal(signal.SIGTERM) if in_main else None
    try:
        ray.init(address=address, log_to_driver=False, logging_level="warning")
    except (ConnectionError, ValueError, RuntimeError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        if address == "local":
            raise UserError(f"--backend ray: cannot start Ray on this machine ({first}); give --ray-address of a "
                            "running cluster, or use --backend local") from None
        raise UserError(f"--ray-address {address}: cannot join the Ray cluster ({first}); start it with `ray start "
                        "--head`, or leave --ray-address out to run Ray on this machine") from None
    finally:
        if sigterm is not None:
            signal.signal(signal.SIGTERM, sigterm)
    return RayCells(ray, started=True, device_flag=args.device)


def _check_reachable(address: str) -> None:
    """A HOST:PORT that nothing answers on is one UserError now, not minutes of ray.init retrying."""
    host, _, port = address.rpartition(":")
    if "://" in address or not host or not port.isdigit():
        return
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_S).close()
    except OSError as e:
        raise UserError(f"--ray-address {address}: nothing answers there ({e.strerror or e}); start the head with "
                        "`ray start --head` and give the address it prints") from None


# ---- on the Ray worker


def _cell_task(argv: list[str], env: dict, timeout_s: float, mem_limit_gb: float | None, cache_env: dict) -> dict:
    """Run one `ttt-decode bench` (argv without the interpreter) in its own session on this node, its
    --logdir a temporary directory; what it wrote, how it ended and where it ran."""
    import ray

    ctx = ray.get_runtime_context()
    gpus = [str(g) for g in ctx.get_accelerator_ids().get("GPU", [])]
    where = {"ray_node": {"id": ctx.get_node_id(), "ip": ray.util.get_node_ip_address()},
             "gpu_assigned": ",".join(gpus) or None}
    child_env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
    # The cell imports the same ttt_decode as this worker (as the local backend's cell does the sweep's).
    src = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    child_env["PYTHONPATH"] = src + os.pathsep + child_env.get("PYTHONPATH", "")
    if where["gpu_assigned"]:
        child_env["TTT_DECODE_GPU_ASSIGNED"] = where["gpu_assigned"]
    child_env.update(_node_caches(cache_env))
    with tempfile.TemporaryDirectory(prefix="ttt-decode-cell-") as logdir:
        out_path = os.path.join(logdir, "cell.out")
        with open(out_path, "wb") as out:
            proc = subprocess.Popen([sys.executable, *_with_logdir(argv, logdir)], env=child_env,
                                    stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True, preexec_fn=_cell_preexec(mem_limit_gb))
        how = _wait(proc, timeout_s)
        return {**where, "rc": proc.returncode, "how": how, "results": _read(os.path.join(logdir, "results.jsonl")),
                "output": _read(out_path, last=OUTPUT_BYTES)}


def _node_caches(cache_env: dict) -> dict:
    """The sweep's compiled-kernel cache directories (the variables its user left unset) as made on this
    node: one that cannot be made here (the sweep's logdir path not on this node, not writable) replaced
    by one under this node's temporary directory, shared by the cells that run here."""
    chosen = {}
    for var, path in cache_env.items():
        try:
            os.makedirs(path, exist_ok=True)
            if not os.access(path, os.W_OK | os.X_OK):
                raise PermissionError(path)
        except OSError:
            path = os.path.join(tempfile.gettempdir(), "ttt-decode-compile-cache", os.path.basename(path))
            os.makedirs(path, exist_ok=True)
        chosen[var] = path
    return chosen


def _with_logdir(argv: list[str], logdir: str) -> list[str]:
    i = argv.index("--logdir")
    return [*argv[:i + 1], logdir, *argv[i + 2:]]


def _cell_preexec(mem_limit_gb: float | None):
    """In the cell's process before exec: die with the worker (Linux), cap the address space (CPU cells)."""
    import ctypes
    import resource

    # Looked up before the fork: the child only calls it.
    prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None
    worker = os.getpid()

    def preexec():
        if prctl is not None:
            prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
            # The worker died between the fork and prctl: no signal will come.
            if os.getppid() != worker:
                os._exit(1)
        if mem_limit_gb:
            n = int(mem_limit_gb * 2**30)
            resource.setrlimit(resource.RLIMIT_AS, (n, n))

    return preexec


def _wait(proc: subprocess.Popen, timeout_s: float) -> str | None:
    """Until the cell ends: None, or 'timeout' (its group killed at timeout_s)."""
    try:
        proc.wait(timeout=timeout_s)
        return None
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        return "timeout"
    except BaseException:
        # Ray interrupted the task (a cancel without force): the cell does not outlive it.
        _kill_group(proc)
        raise


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def _read(path: str, last: int | None = None) -> bytes:
    try:
        with open(path, "rb") as fh:
            if last is not None:
                fh.seek(max(0, os.fstat(fh.fileno()).st_size - last))
            return fh.read()
    except FileNotFoundError:
        return b""
