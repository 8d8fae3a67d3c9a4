"""Issue 4 GPU evidence (Mamba): correctness first, then timings; JSON lines under $OUT, a compact table last.

    PYTHONUNBUFFERED=1 PYTHONPATH=src python3 exp/gpu/mamba_check.py [--sweep] [--commit C]
    (--smoke: the same code paths on CPU at tiny sizes, Triton interpreter; nothing timed there means anything)

Stages (each guarded: a failure is recorded and the next stage runs; optional stages skip near the deadline):
  env      GPU, versions, mamba-ssm / causal-conv1d importable; measured copy bandwidth (1 GiB D2D copy,
           read + write counted, median of CUDA-event timings).
  kernel   fused ssm_step vs float64 at mamba-1.4b shapes (and conv_step), every state dtype.
  fidelity (a) mamba-1.4b fp16, mamba_triton in a CUDA graph, fp32 state (and fp16 state), teacher-forced with
           the same tokens as the float32 eager mamba_ref path: per-step relative logit error over 64 steps,
           batch 16; also graph vs eager (bitwise) and prefill+decode vs full forward.
  micro    (b) per-layer time of the fused kernel at B = 256, 512, 1024, 2048, fp32 and fp16 state, inside a
           CUDA graph with 4 rotated input sets (state working set > L2), GB/s on compulsory bytes and % of
           the copy bandwidth; conv_step; mamba-ssm's selective_state_update and causal_conv1d_update on
           the same inputs when installed. --sweep also times hand-picked alternative launch configs.
  baseline mamba-ssm:/hf: adapters vs ours (mamba-130m, teacher forced); compile check (mamba-130m).
  decode   whole-model decode tokens/s: our generate (CUDA graphs) vs mamba-ssm's generate(cg=True).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import traceback

import torch

T0 = time.time()
RECORDS: list[dict] = []
TABLE: list[str] = []


def elapsed() -> float:
    return time.time() - T0


def log(msg: str) -> None:
    print(f"[{elapsed():6.1f}s] {msg}", flush=True)


def emit(rec: dict, out: str) -> None:
    rec = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), **rec}
    RECORDS.append(rec)
    with open(out, "a") as fh:
        fh.write(json.dumps(rec) + "\n")


def stage(name, fn, args, deadline=None):
    if deadline is not None and elapsed() > deadline:
        log(f"skip {name}: past {deadline:.0f}s")
        TABLE.append(f"{name}: skipped (time)")
        return
    log(f"== {name}")
    try:
        fn(args)
    except Exception as e:
        traceback.print_exc()
        emit({"kind": "error", "stage": name, "error": f"{type(e).__name__}: {e}"[:2000], **args.meta}, args.out)
        TABLE.append(f"{name}: ERROR {type(e).__name__}: {str(e)[:150]}")
    if args.cuda:
        torch.cuda.empty_cache()


# ---------------------------------------------------------------- timing
def sync(args):
    if args.cuda:
        torch.cuda.synchronize()


def time_rotated(fns, args, reps_in_graph=4, replays=12):
    """Median us per call of fns (one callable per rotated input set), all inside one CUDA graph."""
    for f in fns:
        f()
    sync(args)
    if not args.cuda:
        t = time.perf_counter()
        for f in fns:
            f()
        return (time.perf_counter() - t) * 1e6 / len(fns), []
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for f in fns:
            f()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(reps_in_graph):
            for f in fns:
                f()
    n = reps_in_graph * len(fns)
    g.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(replays):
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        g.replay()
        e1.record()
        e1.synchronize()
        times.append(e0.elapsed_time(e1) * 1e3 / n)
    del g
    return statistics.median(times), times


# ---------------------------------------------------------------- stages
def st_env(args):
    import triton

    info = {"torch": torch.__version__, "triton": triton.__version__, "cuda": torch.version.cuda}
    if args.cuda:
        p = torch.cuda.get_device_properties(0)
        info.update(gpu=torch.cuda.get_device_name(), sms=p.multi_processor_count,
                    mem_gb=round(p.total_memory / 2 ** 30, 1), tf32=torch.backends.cuda.matmul.allow_tf32)
    for mod in ("mamba_ssm", "causal_conv1d", "transformers"):
        try:
            m = __import__(mod)
            info[mod] = getattr(m, "__version__", "ok")
        except Exception as e:
            info[mod] = f"unavailable: {type(e).__name__}: {str(e)[:200]}"
    args.meta["gpu"] = info.get("gpu", "cpu")
    # Copy bandwidth three ways (read + write counted); the best is the ceiling the kernels are held to.
    n = (1 << 30) if args.cuda else (1 << 22)
    src = torch.randn(n // 4, dtype=torch.float32, device=args.device)
    dst = torch.empty_like(src)
    ways = {}
    us, _ = time_rotated([lambda: dst.copy_(src)], args, reps_in_graph=5, replays=15)
    ways["memcpy_in_graph"] = 2 * n / us / 1e3
    us, _ = time_rotated([lambda: torch.mul(src, 1.0, out=dst)], args, reps_in_graph=5, replays=15)
    ways["elementwise_kernel_in_graph"] = 2 * n / us / 1e3
    if args.cuda:
        dst.copy_(src)
        torch.cuda.synchronize()
        times = []
        for _ in range(15):
            e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            e0.record()
            dst.copy_(src)
            e1.record()
            e1.synchronize()
            times.append(e0.elapsed_time(e1) * 1e3)
        ways["memcpy_eager"] = 2 * n / statistics.median(times) / 1e3
    args.copy_gbs = max(ways.values())
    info["copy_gb_per_s"] = round(args.copy_gbs, 1)
    info["copy_gb_per_s_ways"] = {k: round(v, 1) for k, v in ways.items()}
    del src, dst
    emit({"kind": "env", **info, **args.meta}, args.out)
    log(json.dumps(info))
    TABLE.append(f"env: {info.get('gpu')} torch {info['torch']} triton {info['triton']}; copy {args.copy_gbs:.0f} GB/s "
                 f"{info['copy_gb_per_s_ways']}; "
                 f"mamba_ssm {info['mamba_ssm']}; causal_conv1d {info['causal_conv1d']}; transformers {info['transformers']}")


def rel(a, b):
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm()).item()


def st_kernel(args):
    from ttt_decode.configs import get_config
    from ttt_decode.ops import mamba as mops
    from ttt_decode.bench.mamba_micro import make_inputs

    cfg = get_config(args.model_big)
    B = 37
    for sd in (torch.float32, torch.float16, torch.bfloat16):
        a = make_inputs(cfg, B, sd, args.device, seed=5)
        a["conv_pos"].fill_(2)
        w = (torch.randn(cfg.d_inner, cfg.d_conv, device=args.device) * 0.5).half()
        bias = (torch.randn(cfg.d_inner, device=args.device) * 0.3).half()
        taps = w.t().contiguous()  # the decode conv takes its weights tap-major, [W, D]
        c_tri = mops.conv_step(a["x"], a["conv_state"], a["conv_pos"], taps, bias, impl="triton")
        c_ref = mops.conv_step(a["x"].double(), a["conv_state"].double(), a["conv_pos"], taps.double(), bias.double())
        c_torch = mops.conv_step(a["x"], a["conv_state"], a["conv_pos"], taps, bias)
        args_ = [a[k] for k in ("x", "x_c", "z", "dt", "B", "C", "A_log", "D", "dt_bias")]
        res = {}
        for impl in ("triton", "naive"):
            conv, st = a["conv_state"].clone(), a["ssm_state"].clone()
            y = mops.ssm_step(*args_, conv, a["conv_pos"], st, impl=impl)
            res[impl] = (y, st, conv)
        st64 = a["ssm_state"].double()
        y64 = mops.ssm_step(*(t.double() for t in args_), a["conv_state"].double(), a["conv_pos"], st64)
        expect = a["conv_state"].clone()
        expect[:, 2] = a["x"]
        rec = {"kind": "kernel_check", "model": args.model_big, "batch": B, "state_dtype": str(sd)[6:],
               "conv_rel_err": rel(c_tri, c_ref), "conv_rel_err_torch": rel(c_torch, c_ref),
               "y_rel_err": rel(res["triton"][0], y64), "y_rel_err_torch": rel(res["naive"][0], y64),
               "state_rel_err": rel(res["triton"][1], st64), "state_rel_err_torch": rel(res["naive"][1], st64),
               "conv_ring_exact": bool(torch.equal(res["triton"][2], expect)), **args.meta}
        ok = (rec["conv_ring_exact"] and rec["y_rel_err"] <= 2 * rec["y_rel_err_torch"] + 1e-6
              and rec["state_rel_err"] <= 2 * rec["state_rel_err_torch"] + 1e-6 and rec["conv_rel_err"] < 1e-2)
        rec["passed"] = bool(ok)
        emit(rec, args.out)
        TABLE.append(f"kernel {str(sd)[6:]:8s} y err {rec['y_rel_err']:.1e} (torch {rec['y_rel_err_torch']:.1e}) "
                     f"state {rec['state_rel_err']:.1e} (torch {rec['state_rel_err_torch']:.1e}) conv {rec['conv_rel_err']:.1e} "
                     f"ring {'ok' if rec['conv_ring_exact'] else 'WRONG'} -> {'PASS' if ok else 'FAIL'}")


def st_fidelity(args):
    from ttt_decode.decode import teacher_force
    from ttt_decode.decode.check import per_step_rel_err, reference_model
    from ttt_decode.models import build

    B, P, T = args.fid_batch, 4, args.fid_steps
    model = build(args.model_big, inner_net="mamba_triton", dtype="float16", device=args.device)
    ref = reference_model(model, "mamba_ref", torch.float32)
    gen = torch.Generator(device=args.device).manual_seed(0)
    ids = torch.randint(0, model.vocab_size, (B, P + T), device=args.device, generator=gen)
    t = time.perf_counter()
    ref_logits = teacher_force(ref, ids, P, cuda_graph=False)
    log(f"reference (fp32 eager mamba_ref) {time.perf_counter() - t:.1f}s")
    del ref
    torch.cuda.empty_cache() if args.cuda else None
    dec = slice(P, P + T)
    V = model.vocab_size
    for sd in (torch.float32, torch.float16):
        t = time.perf_counter()
        test = teacher_force(model, ids, P, cuda_graph=args.cuda, state_dtype=sd)
        secs = time.perf_counter() - t
        errs = per_step_rel_err(test[:, dec], ref_logits[:, dec]).cpu()
        per_seq = ((test[:, dec].double() - ref_logits[:, dec].double()).norm(dim=-1)
                   / ref_logits[:, dec].double().norm(dim=-1)).amax(0).cpu()  # [T] max over sequences
        argmax = (test[:, dec, :V].argmax(-1) != ref_logits[:, dec, :V].argmax(-1)).double().mean().item()
        prefill_err = rel(test[:, :P], ref_logits[:, :P])
        rec = {"kind": "fidelity", "model": args.model_big, "inner_net": model.inner_net, "dtype": "float16",
               "state_dtype": str(sd)[6:], "reference": "mamba_ref float32 eager", "cuda_graph": args.cuda,
               "batch": B, "promptlen": P, "steps": T, "max_rel_err": float(errs.max()),
               "max_rel_err_any_seq": float(per_seq.max()), "prefill_rel_err": prefill_err,
               "argmax_differ_frac": argmax, "per_step_rel_err": [round(float(e), 6) for e in errs],
               "per_step_max_seq_rel_err": [round(float(e), 6) for e in per_seq], "seconds": round(secs, 1),
               "passed": bool(errs.max() < 1e-2 and per_seq.max() < 1e-2), **args.meta}
        emit(rec, args.out)
        print("per-step rel err (norm over batch), state", str(sd)[6:], " ".join(f"{e:.1e}" for e in errs.tolist()))
        print("per-step max over sequences         ", " ".join(f"{e:.1e}" for e in per_seq.tolist()))
        TABLE.append(f"fidelity {args.model_big} fp16 graph state {str(sd)[6:]:7s}: max rel err {errs.max():.2e} "
                     f"(worst seq {per_seq.max():.2e}), prefill {prefill_err:.1e}, argmax differs "
                     f"{100 * argmax:.2f}% -> {'PASS' if rec['passed'] else 'FAIL'} (tol 1e-2, {T} steps, B={B})")
        if sd == torch.float32:
            eager = teacher_force(model, ids, P, cuda_graph=False, state_dtype=sd)
            diff = (eager - test).abs().max().item()
            full = model(ids)
            fwd = rel(full[:, dec], eager[:, dec])
            emit({"kind": "check", "check": "graph_vs_eager+prefill_decode_vs_forward", "model": args.model_big,
                  "max_abs_diff_graph_vs_eager": diff, "rel_err_decode_vs_forward": fwd, **args.meta}, args.out)
            TABLE.append(f"graph vs eager max abs diff {diff:.1e}; prefill+decode vs full forward (fp16) rel {fwd:.1e}")


def _micro_sets(cfg, B, sd, args, n_sets):
    from ttt_decode.bench.mamba_micro import make_inputs

    sets = []
    for i in range(n_sets):
        a = make_inputs(cfg, B, sd, args.device, seed=100 + i)
        a["w"] = (torch.randn(cfg.d_inner, cfg.d_conv, device=args.device) * 0.5).half()
        a["taps"] = a["w"].t().contiguous()  # what our decode conv reads, [W, D]
        a["bias"] = (torch.randn(cfg.d_inner, device=args.device) * 0.3).half()
        sets.append(a)
    return sets


# Run 1 swept ROWS 1..8 x BLOCK_D 16..256 (one row per program won); run 2 sweeps around the new default.
SWEEP = {4: [(64, 1, 4), (128, 1, 8), (256, 1, 4), (256, 1, 8), (128, 1, 2), (64, 2, 4)],
         2: [(128, 1, 4), (256, 1, 8), (512, 1, 4), (512, 1, 8), (256, 1, 2), (128, 2, 4)]}


def st_micro(args):
    from ttt_decode.configs import get_config
    from ttt_decode.ops.mamba import conv_step_bytes, ssm_step_bytes, ssm_step_flops
    from ttt_decode.ops.mamba import triton_decode as td

    cfg = get_config(args.model_big)
    D, S, W = cfg.d_inner, cfg.d_state, cfg.d_conv
    try:
        from mamba_ssm.ops.triton.selective_state_update import selective_state_update
    except Exception:
        selective_state_update = None
    try:
        from causal_conv1d import causal_conv1d_update
    except Exception:
        causal_conv1d_update = None
    rows = []
    for sd in (torch.float32, torch.float16):
        s_item = torch.empty((), dtype=sd).element_size()
        for B in args.micro_batches:
            if elapsed() > args.deadline_micro:
                log("micro: time is up, stopping")
                return
            sets = _micro_sets(cfg, B, sd, args, args.n_sets)
            nbytes = ssm_step_bytes(B, D, S, 2, s_item, 2)
            state_bytes = 2 * B * D * S * s_item
            base = {"kind": "micro", "model": args.model_big, "state_dtype": str(sd)[6:], "batch": B,
                    "copy_gb_per_s": round(args.copy_gbs, 1), **args.meta}

            def record(kernel, us, nb, extra=None):
                rec = {**base, "kernel": kernel, "us_per_layer": round(us, 2), "bytes": nb,
                       "gb_per_s": round(nb / us / 1e3, 1), "pct_copy_bw": round(100 * nb / us / 1e3 / args.copy_gbs, 1),
                       "state_bytes": state_bytes, "state_gb_per_s": round(state_bytes / us / 1e3, 1),
                       "pct_copy_bw_state": round(100 * state_bytes / us / 1e3 / args.copy_gbs, 1), **(extra or {})}
                emit(rec, args.out)
                return rec

            def ssm_fn(a, config=None):
                out = torch.empty(B, D, dtype=torch.float16, device=args.device)
                return lambda: td._launch_ssm_step(a["x"], a["x_c"], a["z"], a["dt"], a["B"], a["C"], a["A_log"], a["D"],
                                                   a["dt_bias"], a["conv_state"], a["conv_pos"], a["ssm_state"], out,
                                                   config)

            default = td.ssm_config(B, sd, S)
            us, _ = time_rotated([ssm_fn(a) for a in sets], args)
            r = record("mamba_step_triton", us, nbytes, {"config": default, "flops": ssm_step_flops(B, D, S)})
            row = {"sd": str(sd)[6:], "B": B, "ours": r}
            if args.sweep:
                best = (us, default)
                for bd, rw, nw in SWEEP[s_item]:
                    c = {"BLOCK_D": bd, "ROWS": rw, "num_warps": nw}
                    if c == default:
                        continue
                    u, _ = time_rotated([ssm_fn(a, c) for a in sets], args)
                    record("mamba_step_triton_sweep", u, nbytes, {"config": c})
                    if u < best[0]:
                        best = (u, c)
                row["best"] = best
            cb = conv_step_bytes(B, D, W, 2, 2)

            def conv_fn(a):
                out = torch.empty(B, D, dtype=torch.float16, device=args.device)
                return lambda: td._launch_conv_step(a["x"], a["conv_state"], a["conv_pos"], a["taps"], a["bias"], out)

            us_c, _ = time_rotated([conv_fn(a) for a in sets], args)
            row["conv"] = record("mamba_conv_step_triton", us_c, cb, {"config": td.conv_config(B)})
            if selective_state_update is not None:
                for a in sets:
                    a["A"] = -torch.exp(a["A_log"].float())
                    a["Df"] = a["D"].float()
                    a["conv_bdw"] = a["conv_state"].transpose(1, 2).contiguous()  # [B, D, W] mamba-ssm layout
                ssu_bytes = 2 * B * D * S * s_item + 4 * B * D * 2 + 2 * B * S * 2 + D * S * 4 + D * 4 + D * 2
                us_m, _ = time_rotated([
                    (lambda a=a: selective_state_update(a["ssm_state"], a["x_c"], a["dt"], a["A"], a["B"], a["C"], a["Df"],
                                                        z=a["z"], dt_bias=a["dt_bias"], dt_softplus=True))
                    for a in sets], args)
                row["mamba_ssm"] = record("mamba_ssm_selective_state_update", us_m, ssu_bytes)
                if causal_conv1d_update is not None:
                    ccu_bytes = 2 * B * D * W * 2 + 2 * B * D * 2 + D * (W + 1) * 2
                    us_cc, _ = time_rotated([
                        (lambda a=a: causal_conv1d_update(a["x"], a["conv_bdw"], a["w"], a["bias"], "silu"))
                        for a in sets], args)
                    row["mamba_ssm_conv"] = record("causal_conv1d_update", us_cc, ccu_bytes)
            rows.append(row)
            del sets
            if args.cuda:
                torch.cuda.empty_cache()
    args.micro_rows = rows


def st_baselines(args):
    from ttt_decode.decode import teacher_force
    from ttt_decode.decode.check import reference_model
    from ttt_decode.models import build, load_model

    name = args.model_small
    ours = build(name, inner_net="mamba_triton", dtype="float16", device=args.device)
    ref = reference_model(ours, "mamba_ref", torch.float32)
    gen = torch.Generator(device=args.device).manual_seed(1)
    P, T, B = 5, 24, 4
    ids = torch.randint(0, ours.vocab_size, (B, P + T), device=args.device, generator=gen)
    want = teacher_force(ref, ids, P)
    mine = teacher_force(ours, ids, P, cuda_graph=args.cuda)
    lines = [f"ours {rel(mine, want):.1e}"]
    rec = {"kind": "baseline_check", "model": name, "batch": B, "promptlen": P, "steps": T,
           "reference": "mamba_ref float32", "ours_rel_err": rel(mine, want), **args.meta}
    for spec in ("hf:" + name, "mamba-ssm:" + name):
        try:
            m = load_model(spec, dtype="float16", device=args.device)
            got = teacher_force(m, ids, P, cuda_graph=args.cuda and m.supports_cuda_graph)
            rec[spec] = {"rel_err_vs_fp32_ref": rel(got, want), "rel_err_vs_ours_fp16": rel(got, mine),
                         "path": getattr(m, "kernel_path", getattr(m, "inner_net", "")),
                         "cuda_graph": bool(args.cuda and m.supports_cuda_graph)}
            lines.append(f"{spec} {rel(got, want):.1e} ({rec[spec]['path']})")
            del m
        except Exception as e:
            rec[spec] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
            lines.append(f"{spec} ERROR {type(e).__name__}: {str(e)[:80]}")
    emit(rec, args.out)
    TABLE.append(f"baselines {name} fp16 vs fp32 ref (rel err, {T} steps): " + "; ".join(lines))
    if args.cuda and elapsed() < args.deadline_compile:
        t = time.perf_counter()
        comp = teacher_force(ours, ids, P, cuda_graph=True, compile=True)
        secs = time.perf_counter() - t
        emit({"kind": "check", "check": "compiled_vs_eager", "model": name, "rel_err": rel(comp, mine),
              "seconds_incl_compile": round(secs, 1), **args.meta}, args.out)
        TABLE.append(f"compile {name}: compiled+graph vs graph rel {rel(comp, mine):.1e} ({secs:.0f}s incl. compile)")


def st_decode(args):
    from ttt_decode.decode import generate
    from ttt_decode.models import build, load_model

    model = build(args.model_big, inner_net="mamba_triton", dtype="float16", device=args.device)
    genlen = args.genlen
    results = []
    ssm = None
    for B in args.decode_batches:
        gen = torch.Generator(device=args.device).manual_seed(B)
        ids = torch.randint(0, model.vocab_size, (B, 1), device=args.device, generator=gen)
        for sd in (torch.float32, torch.float16):
            compiles = (False, True) if (args.decode_compile and B in args.compile_batches and sd == torch.float16) \
                else (False,)
            for comp in compiles:
                if elapsed() > (args.deadline_compile if comp else args.deadline_decode):
                    continue
                r = generate(model, ids, genlen, cuda_graph=args.cuda, state_dtype=sd, compile=comp)
                tps = B * r["decode_steps"] / r["decode_s"]
                cost = model.decode_cost(B, sd)
                floor_ms = cost["bytes"] / (args.copy_gbs * 1e9) * 1e3
                step_ms = 1e3 * r["decode_s"] / r["decode_steps"]
                rec = {"kind": "decode", "model": args.model_big, "impl": "ours mamba_triton", "dtype": "float16",
                       "state_dtype": str(sd)[6:], "batch": B, "genlen": genlen, "compile": comp,
                       "cuda_graph": args.cuda, "decode_tokens_per_s": round(tps, 1), "step_ms": round(step_ms, 3),
                       "cold_start_s": round(r["cold_start_s"], 2), "bytes_per_step": cost["bytes"],
                       "flops_per_step": cost["flops"], "bytes_floor_ms": round(floor_ms, 3),
                       "pct_of_bytes_floor": round(100 * floor_ms / step_ms, 1), **args.meta}
                emit(rec, args.out)
                results.append(rec)
        if args.cuda and elapsed() < args.deadline_decode:
            try:
                if ssm is None:
                    ssm = load_model("mamba-ssm:" + args.model_big, dtype="float16", device=args.device)
                r = ssm.native_generate(ids, genlen)
                tps = B * r["decode_steps"] / r["decode_s"]
                rec = {"kind": "decode", "model": args.model_big, "impl": "mamba-ssm generate(cg=True)", "dtype": "float16",
                       "state_dtype": r["state_dtype"], "batch": B, "genlen": genlen, "decode_tokens_per_s": round(tps, 1),
                       "step_ms": round(1e3 * r["decode_s"] / max(r["decode_steps"], 1), 3),
                       "prefill_s": r["prefill_s"], "e2e_s": r["e2e_s"], "cold_start_s": round(r["cold_start_s"], 2),
                       **args.meta}
                emit(rec, args.out)
                results.append(rec)
            except Exception as e:
                emit({"kind": "error", "stage": "decode mamba-ssm", "batch": B, "error": f"{type(e).__name__}: {e}"[:1000],
                      **args.meta}, args.out)
                TABLE.append(f"decode mamba-ssm B={B}: ERROR {type(e).__name__}: {str(e)[:120]}")
    args.decode_rows = results


def final_table(args):
    print("\n" + "=" * 100)
    for line in TABLE:
        print(line)
    rows = getattr(args, "micro_rows", [])
    if rows:
        print(f"\nfused ssm_step per layer ({args.model_big}), copy bw {args.copy_gbs:.0f} GB/s; "
              "GB/s and % on all compulsory bytes | on state read+write only")
        print(f"{'state':7s} {'B':>5s} {'ours us':>8s} {'GB/s':>6s} {'%copy':>6s} {'%state':>6s} | {'conv us':>7s} | "
              f"{'ssu us':>7s} {'%copy':>6s} {'+ccu us':>7s} | best sweep")
        for r in rows:
            o, c = r["ours"], r["conv"]
            m = r.get("mamba_ssm")
            mc = r.get("mamba_ssm_conv")
            best = r.get("best")
            print(f"{r['sd']:7s} {r['B']:5d} {o['us_per_layer']:8.1f} {o['gb_per_s']:6.0f} {o['pct_copy_bw']:6.1f} "
                  f"{o['pct_copy_bw_state']:6.1f} | {c['us_per_layer']:7.1f} | "
                  + (f"{m['us_per_layer']:7.1f} {m['pct_copy_bw']:6.1f} " if m else f"{'-':>7s} {'-':>6s} ")
                  + (f"{mc['us_per_layer']:7.1f}" if mc else f"{'-':>7s}")
                  + (f" | {best[0]:.1f} us {best[1]}" if best else ""))
    drows = getattr(args, "decode_rows", [])
    if drows:
        print(f"\nwhole-model decode {args.model_big} fp16 weights, genlen {args.genlen}, prompt 1")
        for r in drows:
            print(f"  B={r['batch']:5d} {r['impl']:28s} state {r['state_dtype']:8s} compile {str(r.get('compile', '-')):5s} "
                  f"{r['decode_tokens_per_s'] / 1e3:8.1f} k tok/s  {r['step_ms']:7.2f} ms/step"
                  + (f"  (bytes floor {r['bytes_floor_ms']:.2f} ms)" if "bytes_floor_ms" in r else ""))
    print(f"total {elapsed():.0f}s; records in {args.out}")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--smoke", action="store_true", help="CPU, tiny sizes, interpreter: exercise the code paths")
    p.add_argument("--sweep", action="store_true", help="also time alternative ssm_step launch configs")
    p.add_argument("--commit", default=os.environ.get("GIT_COMMIT", "unknown"))
    p.add_argument("--stages", default="env,kernel,fidelity,micro,decode,baselines")
    p.add_argument("--budget", type=float, default=280.0, help="seconds; optional stages skip past it")
    p.add_argument("--decode-compile", action="store_true", help="also time the compiled step in the decode stage")
    args = p.parse_args()
    if args.smoke:
        os.environ.setdefault("TRITON_INTERPRET", "1")
    args.cuda = torch.cuda.is_available() and not args.smoke
    args.device = "cuda" if args.cuda else "cpu"
    out_dir = os.environ.get("OUT") or "/tmp/mamba_check_out"
    os.makedirs(out_dir, exist_ok=True)
    args.out = os.path.join(out_dir, "mamba_check.jsonl")
    args.meta = {"commit": args.commit, "command": "PYTHONPATH=src python3 exp/gpu/mamba_check.py " + " ".join(sys.argv[1:])}
    args.copy_gbs = float("nan")
    if args.smoke:
        args.model_big, args.model_small = "mamba-tiny", "mamba-tiny"
        args.micro_batches, args.decode_batches, args.n_sets, args.compile_batches = [3, 5], [2], 2, [2]
        args.fid_batch, args.fid_steps, args.genlen = 2, 6, 4
    else:
        args.model_big, args.model_small = "mamba-1.4b", "mamba-130m"
        args.micro_batches, args.decode_batches, args.n_sets = [256, 512, 1024, 2048], [16, 64, 256, 512, 1024], 4
        args.compile_batches = [64, 512]
        args.fid_batch, args.fid_steps, args.genlen = 16, 64, 128
    b = args.budget
    args.deadline_micro, args.deadline_decode, args.deadline_compile = 0.62 * b, 0.85 * b, 0.60 * b
    plan = {"env": (st_env, None), "kernel": (st_kernel, None), "fidelity": (st_fidelity, None),
            "micro": (st_micro, 0.55 * b), "decode": (st_decode, 0.72 * b), "baselines": (st_baselines, 0.88 * b)}
    for name in args.stages.split(","):
        fn, deadline = plan[name]
        stage(name, fn, args, deadline)
    final_table(args)


if __name__ == "__main__":
    main()
