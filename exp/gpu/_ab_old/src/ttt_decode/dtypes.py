"""What a user names on the command line or in a call, turned into torch values: dtypes and devices.

A leaf module (it imports nothing of the project but its errors), so every layer can parse the same
spellings and give the same one-line errors.
"""

from __future__ import annotations

import torch

from ttt_decode.errors import UserError

DTYPES = {"float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
          "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
          "float64": torch.float64, "fp64": torch.float64, "double": torch.float64}


def parse_dtype(name) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    if name not in DTYPES:
        raise UserError(f"unknown dtype {name!r}; choose one of float16, bfloat16, float32, float64")
    return DTYPES[name]


# What --device accepts. "meta" (shapes only, no data) is for memory estimates inside the toolkit.
DEVICE_HELP = "cpu, cuda or cuda:N"


def parse_device(text: str, allow_meta: bool = False) -> torch.device:
    """'cpu', 'cuda', 'cuda:N' -> torch.device; anything else (tpu, mps, xla, CPU, meta, ...) is a UserError."""
    types = ("cpu", "cuda", "meta") if allow_meta else ("cpu", "cuda")
    try:
        device = torch.device(text)
    except (RuntimeError, TypeError, ValueError):
        device = None
    # torch.device accepts "cpu:0" and "cuda:0"; the exact spelling keeps "CPU" from passing as cpu.
    if device is None or device.type not in types or str(text).split(":")[0] != device.type:
        raise UserError(f"unknown or unsupported device {text!r}; ttt-decode runs on {DEVICE_HELP} "
                        "(e.g. --device cpu)")
    return device


def resolve_device(device) -> torch.device:
    if device is None:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    elif not isinstance(device, torch.device):
        device = parse_device(str(device), allow_meta=True)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("device 'cuda' was asked for but no CUDA GPU is visible; use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UserError(f"device {device} was asked for but only {torch.cuda.device_count()} GPU(s) are visible; "
                        "use cuda:0 or set CUDA_VISIBLE_DEVICES")
    return device
