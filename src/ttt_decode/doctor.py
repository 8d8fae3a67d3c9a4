"""`ttt-decode doctor`: what is installed and usable here, one line each (DESIGN section 8).

Covers the GPU (name, memory, compute capability, driver), torch / Triton / CUDA versions, whether
Triton kernels can run (compiled on the GPU, or the interpreter on CPU), and the optional packages
behind optional features, with the reason one cannot be imported and how to install it.
"""

from __future__ import annotations

import importlib
import os
import platform
import shutil
import subprocess

import torch

# package -> (what needs it, how to install it)
OPTIONAL = {
    "transformers": ("hf:* baselines, Mamba cross-checks", "pip install transformers"),
    "safetensors": ("checkpoint loading/saving", "pip install safetensors"),
    "mamba_ssm": ("mamba-ssm:* baselines", "pip install mamba-ssm causal-conv1d --no-build-isolation (GPU machine)"),
    "causal_conv1d": ("mamba-ssm's fast conv path", "pip install causal-conv1d --no-build-isolation (GPU machine)"),
    "matplotlib": ("report and micro-benchmark plots", "pip install matplotlib"),
    "wandb": ("--wandb logging", "pip install wandb"),
    "tqdm": ("sweep progress bar", "pip install tqdm"),
    "ray": ("sweep --backend ray (cells as Ray tasks, on this machine or a cluster)",
            'pip install -e ".[ray]" (or pip install ray)'),
}


def _driver() -> str:
    if not shutil.which("nvidia-smi"):
        return "nvidia-smi not found"
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _triton_line() -> tuple[bool, str]:
    try:
        import triton
        import triton.language as tl
    except Exception as e:  # noqa: BLE001 - report any import failure in one line
        return False, f"triton: cannot import ({type(e).__name__}: {e})"

    @triton.jit
    def _add_one(x_ptr, N: tl.constexpr):
        offs = tl.arange(0, N)
        tl.store(x_ptr + offs, tl.load(x_ptr + offs) + 1)

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        return True, (f"triton {triton.__version__}: no GPU; kernels run only with TRITON_INTERPRET=1 "
                      "(set it before Python starts)")
    try:
        x = torch.zeros(16, device=device)
        _add_one[(1,)](x, N=16)
        ok = bool((x == 1).all())
        mode = "compiled for the GPU" if device == "cuda" else "interpreter (TRITON_INTERPRET=1)"
        verdict = "" if ok else " but gave a wrong result"
        return ok, f"triton {triton.__version__}: a test kernel ran, {mode}{verdict}"
    except Exception as e:  # noqa: BLE001
        first = str(e).splitlines()[0] if str(e) else ""
        return False, f"triton {triton.__version__}: a test kernel failed ({type(e).__name__}: {first})"


def _switches_line() -> tuple[bool, str]:
    """The toolkit's TTT_DECODE_* switches set here (records name them too: provenance `ttt_decode_env`), and
    TTT-MLP's cache convention with them."""
    from ttt_decode.ops.ttt_mlp import naive as m2

    if m2.DEFER_W1_PROBLEM:
        return False, m2.DEFER_W1_PROBLEM
    from ttt_decode.errors import UserError
    from ttt_decode.ops import split_k
    from ttt_decode.provenance import provenance

    try:
        split_k.check_switch()
    except UserError as e:
        return False, str(e)

    switches = provenance("cpu")["ttt_decode_env"]
    set_ = ", ".join(f"{k}={v}" for k, v in switches.items()) or "none"
    mode = ("defers W1's last-token term (TTT_DECODE_M2_DEFER_W1=1; the default keeps W1 current)" if m2.DEFER_W1
            else "keeps W1 current (the default; TTT_DECODE_M2_DEFER_W1=1 defers its last-token term)")
    return True, f"switches set: {set_}; TTT-MLP's dual decode {mode}"


def known_bad_combinations() -> list[tuple[bool, str]]:
    """Version combinations known to fail here, one line each (nothing when there are none)."""
    from ttt_decode.ops.kernel_op import interpreter_problem

    problem = None if torch.cuda.is_available() else interpreter_problem()
    return [(False, f"known to fail: {problem}")] if problem else []


def report() -> list[tuple[bool, str]]:
    """[(ok, line)] describing this machine."""
    lines = [(True, f"python {platform.python_version()} on {platform.system()} {platform.machine()}"),
             (True, f"torch {torch.__version__} (CUDA {torch.version.cuda or 'none'})")]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            lines.append((True, f"gpu {i}: {p.name}, {p.total_memory / 2**30:.1f} GiB, compute capability "
                                f"{p.major}.{p.minor}, {p.multi_processor_count} SMs"))
        lines.append((True, f"driver {_driver()}; TF32 matmul allowed: {torch.backends.cuda.matmul.allow_tf32}"))
    else:
        lines.append((False, "gpu: none visible (CPU only: CUDA graphs and GPU timings unavailable)"))
    lines.append(_triton_line())
    lines.extend(known_bad_combinations())
    lines.append(_switches_line())
    for name, (feature, install) in OPTIONAL.items():
        try:
            mod = importlib.import_module(name)
            if getattr(mod, "__file__", None) is None:
                # A folder of that name on the path (e.g. Ray's /tmp/ray, run from /tmp), not the package.
                where = ", ".join(getattr(mod, "__path__", None) or []) or "?"
                lines.append((False, f"{name}: not installed (only the folder {where}); needed for {feature}; "
                                     f"{install}"))
                continue
            lines.append((True, f"{name} {getattr(mod, '__version__', '?')}: available for {feature}"))
        except Exception as e:  # noqa: BLE001 - a broken optional package is reported, not raised
            why = "not installed" if isinstance(e, ModuleNotFoundError) and e.name == name else \
                f"cannot import ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
            lines.append((False, f"{name}: {why}; needed for {feature}; {install}"))
    return lines


def add_arguments(p):
    del p  # no options


def main(args) -> int:
    del args
    for ok, line in report():
        print(f"[{'ok' if ok else '--'}] {line}")
    return 0
