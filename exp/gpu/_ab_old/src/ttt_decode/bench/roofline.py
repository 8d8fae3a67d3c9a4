"""The measured roofline: copy bandwidth and dense matmul rate of this device (`ttt-decode calibrate`).

Ceilings are measured, never taken from a datasheet (DESIGN sections 8 and 13.4):
- copy bandwidth: a large device-to-device copy, bytes read + written, median of timed repeats after
  warm-up (on CPU: a large tensor copy, the same way);
- matmul rate: an N x N x N product in fp16 and bf16 (fp32 on CPU) on random data, median.
Each measurement repeats until its timed calls add up to a minimum time (the timer's resolution and
a stall of a loaded machine cannot dominate it), and rates keep four significant digits (a loaded
CPU multiplies at a few hundredths of a TFLOP/s: one decimal would store 0.0). A calibration whose
rates are zero, negative, non-finite or implausible is measured again, longer; it is never stored.
A calibration is stored as JSON (`--out`, and a per-device cache file, written atomically) and every
benchmark record carries the ceilings it was compared with, the bytes and FLOPs of its step, and the
time floor max(bytes / bandwidth, FLOPs / rate). A `--calibration` file that is missing, damaged or
implausible, or was measured on another device, is refused with its name; such a cache file is
measured again.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import sys
import time

import torch

from ttt_decode.errors import RecordWriteError, UserError
from ttt_decode.provenance import gpu_name, gpu_slug, now, provenance

# A rate outside these is a broken measurement or a damaged file, never a device: a CPU under full load
# still copies more than 0.01 GB/s and multiplies faster than 1e-5 TFLOP/s (10 MFLOP/s); no device copies
# at 100 TB/s or multiplies at 100 PFLOP/s (an H100: about 3 TB/s, and 1 PFLOP/s dense fp16).
COPY_GB_PER_S_RANGE = (0.01, 1e5)
MATMUL_TFLOPS_RANGE = (1e-5, 1e5)
# Timed calls of one measurement add up to at least this many ms (doubled on each new attempt).
MIN_TIMED_MS = {"cuda": 20.0, "cpu": 200.0}
MAX_CALLS = 10_000
ATTEMPTS = 3


class CalibrationError(RuntimeError):
    """The device gave no plausible rate in ATTEMPTS ever longer measurements (nothing was stored)."""


def _sig(x: float) -> float:
    """Four significant digits: a loaded CPU's 0.04 TFLOP/s must not round to 0.0."""
    return float(f"{x:.4g}")


def _time_ms(fn, device: torch.device, warmup: int = 3, repeats: int = 10, min_total_ms: float = 0.0) -> float:
    """Median milliseconds of fn() after warm-up, over at least `repeats` calls adding up to at least
    min_total_ms; CUDA events on GPU, perf_counter on CPU."""
    for _ in range(warmup):
        fn()
    times = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    while len(times) < repeats or (sum(times) < min_total_ms and len(times) < MAX_CALLS):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def measure_copy_bandwidth(device, nbytes: int | None = None, min_total_ms: float = 0.0) -> float:
    """GB/s of a device-to-device copy, counting bytes read plus bytes written."""
    device = torch.device(device)
    nbytes = nbytes or (2**30 if device.type == "cuda" else 2**27)
    src = torch.empty(nbytes // 2, dtype=torch.float16, device=device).normal_()
    dst = torch.empty_like(src)
    ms = _time_ms(lambda: dst.copy_(src), device, min_total_ms=min_total_ms)
    return 2 * nbytes / (ms * 1e-3) / 1e9


def measure_matmul_tflops(device, dtype: torch.dtype, n: int | None = None, min_total_ms: float = 0.0) -> float:
    device = torch.device(device)
    n = n or (8192 if device.type == "cuda" else 1024)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    ms = _time_ms(lambda: a @ b, device, min_total_ms=min_total_ms)
    return 2 * n**3 / (ms * 1e-3) / 1e12


def _rate_problem(name: str, value, bounds: tuple[float, float], unit: str) -> str | None:
    lo, hi = bounds
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return f"{name} is {value!r}, not a finite number"
    if not lo <= value <= hi:
        return f"{name} is {value:g} {unit}, outside the plausible {lo:g} to {hi:g}"
    return None


def calibration_problem(cal) -> str | None:
    """What makes a calibration unusable (None if nothing): a missing field, or a rate that is zero,
    negative, non-finite or implausible."""
    if not isinstance(cal, dict):
        return "it is not a JSON object"
    if not isinstance(cal.get("gpu"), str):
        return "it names no device ('gpu')"
    problem = _rate_problem("copy_gb_per_s", cal.get("copy_gb_per_s"), COPY_GB_PER_S_RANGE, "GB/s")
    if problem:
        return problem
    rates = cal.get("matmul_tflops")
    if not isinstance(rates, dict) or not rates:
        return "matmul_tflops is missing or empty"
    for dtype, rate in rates.items():
        problem = _rate_problem(f"matmul_tflops.{dtype}", rate, MATMUL_TFLOPS_RANGE, "TFLOP/s")
        if problem:
            return problem
    return None


def calibrate(device=None) -> dict:
    """Measure this device's ceilings; retried with longer measurements until every rate is plausible."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtypes = (torch.float16, torch.bfloat16) if device.type == "cuda" else (torch.float32,)
    problem = None
    for attempt in range(ATTEMPTS):
        min_ms = MIN_TIMED_MS[device.type] * 2**attempt
        rates = {str(d).replace("torch.", ""): _sig(measure_matmul_tflops(device, d, min_total_ms=min_ms))
                 for d in dtypes}
        cal = {"kind": "calibration", **provenance(device),
               "copy_gb_per_s": _sig(measure_copy_bandwidth(device, min_total_ms=min_ms)), "matmul_tflops": rates}
        problem = calibration_problem(cal)
        if problem is None:
            return cal
    raise CalibrationError(f"calibration of {gpu_name(device)} failed: {problem} after {ATTEMPTS} ever longer "
                           "measurements, so nothing was stored; is the device faulty? rerun `ttt-decode calibrate`")


def cache_path(name: str) -> str:
    root = os.environ.get("TTT_DECODE_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "ttt_decode"))
    return os.path.join(root, f"calibration-{gpu_slug(name)}.json")


def _read(path: str, device_name: str | None) -> tuple[dict | None, str | None]:
    """(calibration, None), or (None, what is wrong with the file at path)."""
    try:
        with open(path, encoding="utf-8") as fh:
            cal = json.load(fh)
    except FileNotFoundError:
        return None, "not found"
    except OSError as e:
        return None, f"cannot be read ({e.strerror or e})"
    except json.JSONDecodeError as e:
        return None, f"is not valid JSON ({e.msg}, line {e.lineno} column {e.colno})"
    except UnicodeDecodeError:
        return None, "is not valid JSON (not UTF-8 text)"
    problem = calibration_problem(cal)
    if problem:
        return None, f"is not a usable calibration: {problem}"
    if device_name is not None and cal["gpu"] != device_name:
        return None, f"was measured on {cal['gpu']!r}, not on this device ({device_name!r})"
    return cal, None


def read_calibration(path: str, device_name: str | None = None) -> dict:
    """A --calibration file, checked; a UserError naming the file and the fix if it cannot be used."""
    cal, problem = _read(path, device_name)
    if problem:
        raise UserError(f"calibration file {path} {problem}; run `ttt-decode calibrate --out {path}` on this "
                        "machine, or leave --calibration out (the cached calibration is used)")
    return cal


def load_or_measure(device, path: str | None = None) -> tuple[dict, str]:
    """A calibration for this device: from `path` (refused with its name if unusable), else the cache
    (measured again if unusable), else measured now (and cached).

    Returns (calibration, where) with where in {"file", "cache", "measured"}."""
    device = torch.device(device)
    name = gpu_name(device)
    if path:
        return read_calibration(path, name), "file"
    cache = cache_path(name)
    if os.path.exists(cache):
        cal, problem = _read(cache, name)
        if cal is not None:
            return cal, "cache"
        # A torn write, a zero rate stored by an older version, another machine's file: measure again.
        print(f"calibration cache {cache} {problem}: measuring again", file=sys.stderr, flush=True)
    else:
        print(f"calibrating {name} (copy bandwidth, matmul rate; cached at {cache}) ...", file=sys.stderr, flush=True)
    cal = calibrate(device)
    save(cal, cache)
    return cal, "measured"


def save(cal: dict, path: str) -> None:
    """Write atomically (a temporary file renamed over path): a reader never sees half a file."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(tmp, "w") as fh:
            json.dump(cal, fh, indent=1)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise RecordWriteError(f"cannot write the calibration to {path}: {e.strerror or e}; free disk space, fix "
                               "the permissions, or set TTT_DECODE_CACHE to a writable directory") from e


def check_out_path(path: str) -> None:
    """--out of calibrate, before anything is measured: not a directory, in a directory that can exist."""
    if os.path.isdir(path):
        raise UserError(f"--out {path} is a directory; give a file name, e.g. {os.path.join(path, 'calibration.json')}")
    parent = os.path.dirname(os.path.abspath(path))
    if os.path.exists(parent) and not os.path.isdir(parent):
        raise UserError(f"--out {path}: {parent} is a file, not a directory; give another --out")


def matmul_rate(cal: dict, dtype: torch.dtype) -> float:
    """TFLOP/s for a weight dtype (fp32/fp64 fall back to the best measured rate: a ceiling, not a claim)."""
    key = str(dtype).replace("torch.", "")
    rates = cal["matmul_tflops"]
    return rates[key] if key in rates else max(rates.values())


def floor(bytes_per_step: int, flops_per_step: int, cal: dict, dtype: torch.dtype) -> dict:
    """The time floor of one step: the larger of the memory and the compute time."""
    mem_ms = bytes_per_step / (cal["copy_gb_per_s"] * 1e9) * 1e3
    compute_ms = flops_per_step / (matmul_rate(cal, dtype) * 1e12) * 1e3
    return {"floor_ms": max(mem_ms, compute_ms), "memory_floor_ms": mem_ms, "compute_floor_ms": compute_ms,
            "bound": "memory" if mem_ms >= compute_ms else "compute"}


def add_arguments(p):
    from ttt_decode.cli_args import device_arg

    p.add_argument("--device", type=device_arg, default=None, help="device to measure: cpu, cuda or cuda:N "
                   "(default: cuda if available)")
    p.add_argument("--out", default=None, help="also write the calibration JSON here (e.g. exp/results/h100/"
                   "calibration.json); it is always cached per device for benchmark cells")


def main(args) -> int:
    from ttt_decode.dtypes import resolve_device

    device = resolve_device(args.device)
    if args.out:
        check_out_path(args.out)
    cal = calibrate(device)
    save(cal, cache_path(cal["gpu"]))
    if args.out:
        save(cal, args.out)
    rates = ", ".join(f"{k} {v:g} TFLOP/s" for k, v in cal["matmul_tflops"].items())
    print(f"{cal['gpu']}: copy {cal['copy_gb_per_s']:g} GB/s (read + write); matmul {rates}")
    print(f"cached at {cache_path(cal['gpu'])}" + (f", written to {args.out}" if args.out else "") + f" ({now()})")
    return 0
