"""The measured roofline: copy bandwidth and dense matmul rate of this device (`ttt-decode calibrate`).

Ceilings are measured, never taken from a datasheet (DESIGN sections 8 and 13.4):
- copy bandwidth: a large device-to-device copy, bytes read + written, median of timed repeats after
  warm-up (on CPU: a large tensor copy, the same way);
- matmul rate: an N x N x N product in fp16 and bf16 (fp32 on CPU) on random data, median.
A calibration is stored as JSON (`--out`, and a per-device cache file) and every benchmark record
carries the ceilings it was compared with, the bytes and FLOPs of its step, and the time floor
max(bytes / bandwidth, FLOPs / rate).
"""

from __future__ import annotations

import json
import os
import statistics
import time

import torch

from ttt_decode.bench.records import gpu_name, gpu_slug, now, provenance


def _time_ms(fn, device: torch.device, warmup: int = 3, repeats: int = 10) -> float:
    """Median milliseconds of fn() after warm-up; CUDA events on GPU, perf_counter on CPU."""
    for _ in range(warmup):
        fn()
    times = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
    else:
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def measure_copy_bandwidth(device, nbytes: int | None = None) -> float:
    """GB/s of a device-to-device copy, counting bytes read plus bytes written."""
    device = torch.device(device)
    nbytes = nbytes or (2**30 if device.type == "cuda" else 2**27)
    src = torch.empty(nbytes // 2, dtype=torch.float16, device=device).normal_()
    dst = torch.empty_like(src)
    ms = _time_ms(lambda: dst.copy_(src), device)
    return 2 * nbytes / (ms * 1e-3) / 1e9


def measure_matmul_tflops(device, dtype: torch.dtype, n: int | None = None) -> float:
    device = torch.device(device)
    n = n or (8192 if device.type == "cuda" else 1024)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    ms = _time_ms(lambda: a @ b, device)
    return 2 * n**3 / (ms * 1e-3) / 1e12


def calibrate(device=None) -> dict:
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtypes = (torch.float16, torch.bfloat16) if device.type == "cuda" else (torch.float32,)
    rates = {str(d).replace("torch.", ""): round(measure_matmul_tflops(device, d), 1) for d in dtypes}
    return {"kind": "calibration", **provenance(device), "copy_gb_per_s": round(measure_copy_bandwidth(device), 1),
            "matmul_tflops": rates}


def cache_path(name: str) -> str:
    root = os.environ.get("TTT_DECODE_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "ttt_decode"))
    return os.path.join(root, f"calibration-{gpu_slug(name)}.json")


def load_or_measure(device, path: str | None = None) -> tuple[dict, str]:
    """A calibration for this device: from `path`, else the cache, else measured now (and cached).

    Returns (calibration, where) with where in {"file", "cache", "measured"}."""
    device = torch.device(device)
    name = gpu_name(device)
    for where, candidate in (("file", path), ("cache", cache_path(name))):
        if candidate and os.path.exists(candidate):
            with open(candidate) as fh:
                cal = json.load(fh)
            if cal.get("gpu") == name:
                return cal, where
    cal = calibrate(device)
    save(cal, cache_path(name))
    return cal, "measured"


def save(cal: dict, path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as fh:
        json.dump(cal, fh, indent=1)


def matmul_rate(cal: dict, dtype: torch.dtype) -> float:
    """TFLOP/s for a weight dtype (fp32/fp64 fall back to the best measured rate: a ceiling, not a claim)."""
    key = str(dtype).replace("torch.", "")
    rates = cal["matmul_tflops"]
    return rates.get(key) or max(rates.values())


def floor(bytes_per_step: int, flops_per_step: int, cal: dict, dtype: torch.dtype) -> dict:
    """The time floor of one step: the larger of the memory and the compute time."""
    mem_ms = bytes_per_step / (cal["copy_gb_per_s"] * 1e9) * 1e3
    compute_ms = flops_per_step / (matmul_rate(cal, dtype) * 1e12) * 1e3
    return {"floor_ms": max(mem_ms, compute_ms), "memory_floor_ms": mem_ms, "compute_floor_ms": compute_ms,
            "bound": "memory" if mem_ms >= compute_ms else "compute"}


def add_arguments(p):
    p.add_argument("--device", default=None, help="device to measure (default: cuda if available)")
    p.add_argument("--out", default=None, help="also write the calibration JSON here (e.g. exp/results/h100/"
                   "calibration.json); it is always cached per device for benchmark cells")


def main(args) -> int:
    from ttt_decode.models import resolve_device

    device = resolve_device(args.device)
    cal = calibrate(device)
    save(cal, cache_path(cal["gpu"]))
    if args.out:
        save(cal, args.out)
    rates = ", ".join(f"{k} {v} TFLOP/s" for k, v in cal["matmul_tflops"].items())
    print(f"{cal['gpu']}: copy {cal['copy_gb_per_s']} GB/s (read + write); matmul {rates}")
    print(f"cached at {cache_path(cal['gpu'])}" + (f", written to {args.out}" if args.out else "") + f" ({now()})")
    return 0
