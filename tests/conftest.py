import os
import subprocess
import sys
import time

import pytest
import torch

# Triton kernels run in the interpreter on CPU-only machines (CI); set before triton is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def poll_until(condition, what: str, timeout: float) -> None:
    """Wait until condition() is true, failing the test after timeout seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def run_compiled_offline(code: str, timeout: int = 600) -> list[str]:
    """Run `code` in a fresh Python without TRITON_INTERPRET (kernels compiled for an NVIDIA target by Triton's
    bundled ptxas, no GPU needed) and return the words it printed; fails the test on a non-zero exit."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=timeout)
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout.split()


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| in float64."""
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()
