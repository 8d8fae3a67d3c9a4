"""Equivalence checks a user can run on any model (DESIGN section 8), `ttt-decode check`.

Every check feeds the same random tokens (teacher forcing: with random weights near-ties make
free-running greedy sequences incomparable) through two paths and compares the logits per step:

  decode_vs_forward          one token at a time from the first token  vs  full-sequence forward
  prefill_decode_vs_forward  prefill of the prompt, then decode steps   vs  full-sequence forward
  graph_vs_eager             decode steps replayed from one CUDA graph  vs  the same steps eagerly
  compiled_vs_eager          torch.compile'd step in a CUDA graph       vs  eager
  batch_vs_single            sequence 0 decoded inside the batch        vs  decoded alone
  repeat                     the same graph run twice                   (must be bitwise equal)
  fidelity                   this model                                 vs  a float32 reference path
                             (same weights; TTT: the PyTorch inner loop of the same form; Mamba:
                             mamba_ref): per-step relative error, share of steps whose argmax
                             differs, and total-variation distance of the next-token distributions.
  state_fidelity             this model with its --state-dtype          vs  the same model and path
                             with the recurrent state in --reference-state-dtype (default float32):
                             what a reduced-precision state costs, with the same figures.
"""

from __future__ import annotations

import json
import time

import torch

from ttt_decode import registry
from ttt_decode.decode.engine import teacher_force
from ttt_decode.errors import UserError
from ttt_decode.provenance import command_line, git_commit

CHECKS = ("decode_vs_forward", "prefill_decode_vs_forward", "graph_vs_eager", "compiled_vs_eager",
          "batch_vs_single", "repeat", "fidelity", "state_fidelity")
GPU_ONLY = ("graph_vs_eager", "compiled_vs_eager")


def default_tolerance(dtype: torch.dtype, check: str = "") -> float:
    """Max relative logit error per step. Against a float32 reference (fidelity) bf16 gets 1e-1:
    its 8-bit mantissa rounds 8x coarser than fp16's 11 bits (fp16 lands near 5e-3 on ttt-1b)."""
    if check in ("fidelity", "state_fidelity") and dtype == torch.bfloat16:
        return 1e-1
    return {torch.float64: 1e-8, torch.float32: 1e-4}.get(dtype, 1e-2)


def per_step_rel_err(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a, b [B, T, V] -> [T]: ||a_t - b_t|| / ||b_t|| over batch and vocabulary, in float64."""
    a, b = a.double(), b.double()
    return (a - b).norm(dim=(0, 2)) / b.norm(dim=(0, 2)).clamp_min(1e-300)


def tv_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Total variation between softmax(a) and softmax(b) per step, mean over the batch -> [T]."""
    return 0.5 * (a.double().softmax(-1) - b.double().softmax(-1)).abs().sum(-1).mean(0)


def reference_inner_net(inner_net: str | None) -> str | None:
    """The PyTorch reference of an implementation (registry): mlp_2_dual_triton -> mlp_2_dual,
    mamba_triton -> mamba_ref, attn_triton -> attn_ref; a reference stays itself."""
    return registry.reference_of(inner_net)


def reference_model(model, inner_net: str | None, dtype: torch.dtype):
    """The same weights in another dtype / inner-loop implementation."""
    from ttt_decode import models

    spec = getattr(model, "reference_spec", None)
    if spec is not None:
        # An outside implementation (hf:, mamba-ssm:): our model with the same weights is the reference.
        return models.load_model(spec["name"], inner_net=inner_net or spec.get("inner_net", "mamba_ref"), dtype=dtype,
                                 device=model.device, seed=spec["seed"])
    if inner_net is None:
        inner_net = reference_inner_net(getattr(model, "inner_net", None))
    ref = models.build(model.config, inner_net=inner_net, dtype=dtype, device=model.device)
    ref.load_state_dict(model.state_dict())
    ref.weights_source = model.weights_source
    return ref


def _summary(name, errs, tol, extra=None):
    errs = errs.cpu()
    worst = int(errs.argmax())
    row = {"check": name, "max_rel_err": float(errs.max()), "mean_rel_err": float(errs.mean()),
           "worst_step": worst, "steps": len(errs), "tol": tol, "passed": bool(errs.max() <= tol),
           "per_step_rel_err": [float(e) for e in errs]}
    row.update(extra or {})
    return row


def run_checks(model, *, batch: int = 4, steps: int = 32, promptlen: int = 1, checks=CHECKS, tol: float | None = None,
               state_dtype=None, reference_inner_net: str | None = None, reference_dtype=torch.float32,
               reference_state_dtype=torch.float32, seed: int = 0, progress=print) -> list[dict]:
    """Run the named checks on `model`; returns one result dict per check (see module docstring)."""
    unknown = [c for c in checks if c not in CHECKS]
    if unknown:
        raise UserError(f"unknown check(s) {', '.join(unknown)}; choose from {', '.join(CHECKS)}")
    if batch < 1 or steps < 1 or promptlen < 1:
        raise UserError("batch, steps and promptlen must all be >= 1")
    on_cuda = model.device.type == "cuda"
    user_tol = tol
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, model.vocab_size, (batch, promptlen + steps), generator=gen).to(model.device)
    decode = slice(promptlen, promptlen + steps)

    def tf(m=model, x=ids, n=promptlen, **kw):
        return teacher_force(m, x, n, state_dtype=state_dtype, **kw)

    results, cache = [], {}

    def eager():
        if "eager" not in cache:
            cache["eager"] = tf(cuda_graph=False)
        return cache["eager"]

    for name in checks:
        # A reduced-precision state is judged by its own dtype (fp16 weights with a bf16 state: bf16's).
        judged = state_dtype if name == "state_fidelity" and state_dtype is not None else model.dtype
        tol = user_tol if user_tol is not None else default_tolerance(judged, name)
        t0 = time.perf_counter()
        if name in GPU_ONLY and not on_cuda:
            results.append({"check": name, "passed": None, "skipped": "needs a CUDA device"})
            if progress:
                progress(format_row(results[-1]))
            continue
        if name == "decode_vs_forward":
            row = _summary(name, per_step_rel_err(tf(n=1, cuda_graph=False), model(ids)), tol)
        elif name == "prefill_decode_vs_forward":
            row = _summary(name, per_step_rel_err(eager(), model(ids)), tol)
        elif name == "graph_vs_eager":
            row = _summary(name, per_step_rel_err(tf(cuda_graph=True)[:, decode], eager()[:, decode]), tol)
        elif name == "compiled_vs_eager":
            row = _summary(name, per_step_rel_err(tf(cuda_graph=True, compile=True)[:, decode], eager()[:, decode]),
                           tol)
        elif name == "batch_vs_single":
            single = tf(x=ids[:1], cuda_graph=on_cuda)
            row = _summary(name, per_step_rel_err(single, eager()[:1]), tol)
        elif name == "repeat":
            a, b = tf(cuda_graph=on_cuda), tf(cuda_graph=on_cuda)
            diff = (a - b).abs().max().item()
            row = {"check": name, "max_abs_diff": diff, "passed": diff == 0.0}
        elif name == "fidelity":
            ref = reference_model(model, reference_inner_net, reference_dtype)
            ref_logits = tf(m=ref, cuda_graph=False)[:, decode]
            del ref
            row = _fidelity_row(name, tf(cuda_graph=on_cuda)[:, decode], ref_logits, model.vocab_size, tol)
            row["reference"] = f"{reference_inner_net or 'default'} in {str(reference_dtype).replace('torch.', '')}"
        else:  # state_fidelity
            ref_logits = teacher_force(model, ids, promptlen, state_dtype=reference_state_dtype,
                                       cuda_graph=False)[:, decode]
            row = _fidelity_row(name, tf(cuda_graph=on_cuda)[:, decode], ref_logits, model.vocab_size, tol)
            row["reference"] = f"state in {str(reference_state_dtype).replace('torch.', '')}"
            row["state_dtype"] = str(state_dtype or model.dtype).replace("torch.", "")
        row["seconds"] = round(time.perf_counter() - t0, 2)
        results.append(row)
        if progress:
            progress(format_row(row))
    return results


def _fidelity_row(name, test, ref_logits, vocab: int, tol: float) -> dict:
    """Per-step relative error of test against ref_logits [B, T, V'], the share of greedy tokens that
    differ and the total-variation distance of the next-token distributions (real vocabulary only)."""
    a, b = test[..., :vocab], ref_logits[..., :vocab]
    differ = (a.argmax(-1) != b.argmax(-1)).double()  # [B, T]
    tv = tv_distance(a, b)
    return _summary(name, per_step_rel_err(test, ref_logits), tol, {
        "argmax_differ_frac": float(differ.mean()),
        "steps_with_any_argmax_diff_frac": float((differ.sum(0) > 0).double().mean()),
        "tv_mean": float(tv.mean()), "tv_max": float(tv.max())})


def format_row(row: dict) -> str:
    if row.get("passed") is None:
        return f"{row['check']:<26} skipped ({row.get('skipped')})"
    status = "PASS" if row["passed"] else "FAIL"
    if "max_rel_err" in row:
        text = (f"{row['check']:<26} {status}  max rel err {row['max_rel_err']:.2e} (step {row['worst_step']}) "
                f"mean {row['mean_rel_err']:.2e}  tol {row['tol']:.0e}")
        if "argmax_differ_frac" in row:
            text += (f"  argmax differs {100 * row['argmax_differ_frac']:.2f}% of tokens "
                     f"({100 * row['steps_with_any_argmax_diff_frac']:.1f}% of steps)  TV mean {row['tv_mean']:.2e}")
        return text
    return f"{row['check']:<26} {status}  max abs diff {row['max_abs_diff']:.2e}"


def add_arguments(p):
    from ttt_decode.cli_args import add_model_args, positive_int

    add_model_args(p)
    p.add_argument("--batch", type=positive_int, default=4, help="sequences (default 4)")
    p.add_argument("--steps", type=positive_int, default=32, help="decode steps compared (default 32)")
    p.add_argument("--promptlen", type=positive_int, default=1, help="prompt tokens prefilled first (default 1)")
    p.add_argument("--checks", default="all", help=f"comma list from {', '.join(CHECKS)} (default all)")
    p.add_argument("--tol", type=float, default=None,
                   help="max relative logit error per step (default: 1e-2 fp16/bf16, 1e-4 fp32, 1e-8 fp64; "
                        "fidelity of bf16 vs float32: 1e-1)")
    p.add_argument("--reference-inner-net", dest="reference_inner_net", default=None,
                   help="inner net of the fidelity reference (default: PyTorch version of the same form)")
    p.add_argument("--reference-dtype", dest="reference_dtype", default="float32",
                   help="dtype of the fidelity reference (default float32)")
    p.add_argument("--reference-state-dtype", dest="reference_state_dtype", default="float32",
                   help="state dtype of the state_fidelity reference (default float32)")
    p.add_argument("--out", default=None, help="append the results as one JSON line to this file")


def main(args) -> int:
    from ttt_decode.dtypes import parse_dtype
    from ttt_decode.models import load_model

    checks = CHECKS if args.checks == "all" else tuple(c.strip() for c in args.checks.split(",") if c.strip())
    model = load_model(args.model_name, inner_net=args.inner_net, dtype=args.dtype, device=args.device, seed=args.seed)
    state_dtype = parse_dtype(args.state_dtype) if args.state_dtype else None
    print(f"check {args.model_name} inner_net={getattr(model, 'inner_net', '-')} dtype={model.dtype} "
          f"state_dtype={state_dtype or 'default'} device={model.device} batch={args.batch} steps={args.steps} "
          f"promptlen={args.promptlen}")
    results = run_checks(model, batch=args.batch, steps=args.steps, promptlen=args.promptlen, checks=checks,
                         tol=args.tol, state_dtype=state_dtype, reference_inner_net=args.reference_inner_net,
                         reference_dtype=parse_dtype(args.reference_dtype),
                         reference_state_dtype=parse_dtype(args.reference_state_dtype), seed=args.seed)
    if args.out:
        record = {"kind": "check", "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "model": args.model_name,
                  "inner_net": getattr(model, "inner_net", None), "dtype": str(model.dtype).replace("torch.", ""),
                  "state_dtype": args.state_dtype, "batch": args.batch, "steps": args.steps,
                  "promptlen": args.promptlen, "device": torch.cuda.get_device_name() if model.device.type == "cuda"
                  else "cpu", "git_commit": git_commit(), "command": command_line(), "results": results}
        with open(args.out, "a") as fh:
            fh.write(json.dumps(record) + "\n")
    failed = [r["check"] for r in results if r.get("passed") is False]
    print("all checks passed" if not failed else f"FAILED: {', '.join(failed)}")
    return 1 if failed else 0
