"""Provenance of a record: the commit of the code, the command, the machine and its GPU.

A leaf module (it imports nothing of the project), so that every layer that writes a record (bench
cells, checks, the micro-benchmark, calibration) names commits, commands and GPUs the same way.
"""

from __future__ import annotations

import functools
import os
import platform
import shlex
import shutil
import socket
import subprocess
import sys
import time

import torch


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


# TTT_DECODE_* variables that say where or for whom a record was made, recorded in fields of their own.
_NOT_SWITCHES = {"TTT_DECODE_COMMIT", "TTT_DECODE_GPU_ASSIGNED", "TTT_DECODE_CACHE"}


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
        # The compiled-kernel caches in effect (a sweep shares them between its cells); null: the library default.
        "compile_cache": {"inductor": os.environ.get("TORCHINDUCTOR_CACHE_DIR") or None,
                          "triton": os.environ.get("TRITON_CACHE_DIR") or None},
        # The toolkit's own switches (TTT_DECODE_*, e.g. TTT_DECODE_M2_DEFER_W1) that were set: part of what ran.
        "ttt_decode_env": {k: v for k, v in sorted(os.environ.items())
                           if k.startswith("TTT_DECODE_") and k not in _NOT_SWITCHES},
        "command": command_line(),
    }
    if device.type == "cuda":
        idx = device.index if device.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(idx)
        info.update(gpu_index=idx, gpu_memory_gb=round(props.total_memory / 2**30, 2),
                    sm_count=props.multi_processor_count)
    return info
