"""Result records: provenance of the machine and code, and append-only JSON lines.

Every record is one JSON object on one line of `<logdir>/results.jsonl`. A line is written with a
single `write` on a file opened for appending, then flushed and fsynced, so a crash (or a killed
cell) never corrupts earlier lines, and several processes (one per GPU) can append to one file.
A human-readable line goes to `<logdir>/logging.log` next to it. The fields of each record kind:
DESIGN section 12.
"""

from __future__ import annotations

import functools
import json
import os
import shlex
import platform
import shutil
import socket
import subprocess
import sys
import time

import torch

RESULTS = "results.jsonl"
LOG = "logging.log"


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


@functools.lru_cache(maxsize=1)
def git_commit() -> str:
    """Short commit of the code that ran, '+dirty' when the tree had uncommitted changes.

    TTT_DECODE_COMMIT overrides it: a copy of the tree without .git (e.g. on a remote GPU machine)
    is told which commit it is."""
    if os.environ.get("TTT_DECODE_COMMIT"):
        return os.environ["TTT_DECODE_COMMIT"]
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True,
                             timeout=10)
        if sha.returncode != 0:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10)
        return sha.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


@functools.lru_cache(maxsize=1)
def _driver() -> str | None:
    if not shutil.which("nvidia-smi"):
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.SubprocessError):
        return None


def gpu_name(device: torch.device | str | None = None) -> str:
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()})"


def gpu_slug(name: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'h100' (the exp/results/<gpu>/ folder name); CPUs -> 'cpu'."""
    low = name.lower()
    if low.startswith("cpu"):
        return "cpu"
    for token in low.replace("-", " ").split():
        if token[:1].isalpha() and any(ch.isdigit() for ch in token) and token not in ("80gb", "141gb", "hbm3"):
            return token
    return low.replace(" ", "_")


# Set by ttt_decode.cli.main to the command as the user gave it (an in-process call passes its own argv).
INVOCATION: str | None = None


def command_line() -> str:
    """The command that produced a record: the CLI invocation, else this process's argv."""
    if INVOCATION:
        return INVOCATION
    prog = os.path.basename(sys.argv[0])
    return " ".join(shlex.quote(a) for a in [prog] + sys.argv[1:])


def provenance(device: torch.device | str | None = None) -> dict:
    """Where and with what a record was produced (DESIGN section 8: provenance)."""
    import triton

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    info = {
        "time": now(), "git_commit": git_commit(), "host": socket.gethostname(), "python": platform.python_version(),
        "torch": torch.__version__, "triton": triton.__version__, "cuda": torch.version.cuda,
        "device": device.type, "gpu": gpu_name(device), "driver": _driver(),
        "tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "gpu_assigned": os.environ.get("TTT_DECODE_GPU_ASSIGNED"),
        "command": command_line(),
    }
    if device.type == "cuda":
        idx = device.index if device.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(idx)
        info.update(gpu_index=idx, gpu_memory_gb=round(props.total_memory / 2**30, 2), sm_count=props.multi_processor_count)
    return info


def append_jsonl(path: str, record: dict) -> None:
    """Append one record as one line, atomically with respect to other appenders."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    line = (json.dumps(record, default=str) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def read_jsonl(path: str) -> list[dict]:
    """All well-formed records of a file; a torn last line (a writer killed mid-write) is skipped."""
    if not os.path.exists(path):
        return []
    out = []
    with open(path) as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


def log_line(logdir: str, text: str) -> None:
    os.makedirs(logdir, exist_ok=True)
    with open(os.path.join(logdir, LOG), "a") as fh:
        fh.write(f"{now()} {text}\n")
