"""qk_prep folded into the dual kernels' prologue (decode_step_dual_qk) against qk_prep then the step, at
ttt-1b shapes (32 heads of 64, mini-batch 16, conv width 4, fp16), per inner kernel and batch.

Variants per model: "qk_prep+triton" (two launches, the Triton kernel), "fused triton" (one launch),
and for M1 also "qk_prep+gluon" and "fused gluon" (the Gluon kernel; GLUON forced on or off in
dual_config, and for the fused op GLUON_QK off: qk_prep's kernel then the Gluon kernel, or on: the Gluon
kernel does qk_prep's work). Each variant is first checked against qk_prep + the naive PyTorch step (same dtype) on
the same inputs (rel err of the output < 1e-2), then timed as the decode step runs it: one CUDA graph
of calls over rotated copies of the state (bench.micro.time_calls, median of the replays), at mini-batch
position 7 (ordinary) and 15 (the end-of-mini-batch update). Mean = (15 x pos 7 + pos 15) / 16.
Writes JSON lines to --out and prints a table last.

--gate-norm (session 16): instead, the model's step with the post-norm and gate (ops.ttt_block.gate_norm, o_proj's
input) as two launches ("fused gluon + gate_norm", "fused triton + gate_norm": the fused op, then gate_norm's own
kernel) against the kernels doing it themselves (GateNorm: "... gn"; the Gluon kernel counting each item one item
late, "gn per item", or all of a program's items after its loop, "gn after loop"); checked against qk_prep, the
naive step and gate_norm (the counters zero after the call).

    python3 exp/gpu/fused_qk_micro.py --out /tmp/fused_qk.jsonl --commit <sha> [--batches 64,128,512] [--m1-only]
        [--gate-norm]
"""

import argparse
import json

import torch

from ttt_decode.bench.micro import state_sets, time_calls
from ttt_decode.ops import ttt_block
from ttt_decode.ops import ttt_block_triton as blk
from ttt_decode.ops.ttt_common import DualCache, GateNorm, TTTState
from ttt_decode.ops.ttt_linear import naive as naive1
from ttt_decode.ops.ttt_linear import triton_decode as tri1
from ttt_decode.ops.ttt_mlp import naive as naive2
from ttt_decode.ops.ttt_mlp import triton_decode as tri2

H, F_, MB, W = 32, 64, 16, 4
D = H * F_


def make(B, mlp, g):
    def r(*shape, scale=1.0, dtype=torch.float16):
        return (scale * torch.randn(*shape, generator=g, device="cuda")).to(dtype)
    Fh = 4 * F_ if mlp else F_
    params = (r(H, F_, Fh, scale=F_ ** -0.5), r(H, Fh, scale=0.1))
    if mlp:
        params += (r(H, Fh, F_, scale=Fh ** -0.5), r(H, F_, scale=0.1))
    state = TTTState.from_params(B, torch.float16, *params)
    cache = DualCache.empty_like_state(state, MB)
    for n, t in cache.tensors().items():
        if n != "pos":
            t.copy_(torch.randn(t.shape, generator=g, device="cuda") * 0.01)
    ang = torch.arange(MB, device="cuda")[:, None] * torch.rand(F_ // 2, device="cuda", generator=g)[None]
    p = r(B, 3 * D + H)
    qk = dict(p=p, ring=r(B, W, D), conv_pos=torch.tensor([1], device="cuda"), wq=r(W, D, scale=0.5),
              bq=r(D, scale=0.1), wk=r(W, D, scale=0.5), bk=r(D, scale=0.1), rope_cos=ang.cos(), rope_sin=ang.sin(),
              rot_pos=torch.tensor([3], device="cuda"), lr_bias=r(H, scale=0.3), token_idx=r(MB, scale=0.1))
    rest = dict(v=p[:, D:2 * D].view(B, H, F_), gamma=1.0 + r(H, F_, scale=0.1), beta=r(H, F_, scale=0.1))
    return state, cache, qk, rest


def qk_args(qk):
    return (qk["p"], qk["ring"], qk["conv_pos"], qk["wq"], qk["bq"], qk["wk"], qk["bk"], qk["rope_cos"],
            qk["rope_sin"], qk["rot_pos"], qk["lr_bias"], qk["token_idx"], 1.0, H, 3 * D)


def unfused(step):
    def run(state, cache, qk, rest):
        q, k, eta, c = blk.qk_prep(*qk_args(qk))
        return step(q, k, rest["v"], eta, c, rest["gamma"], rest["beta"], state, cache, advance=False)
    return run


def fused(step_qk):
    def run(state, cache, qk, rest):
        return step_qk(*qk_args(qk), D, rest["gamma"], rest["beta"], state, cache, advance=False)
    return run


def _norm(B):
    g = torch.Generator(device="cuda").manual_seed(B + 7)
    w = (1.0 + 0.1 * torch.randn(D, generator=g, device="cuda")).half()
    b = (0.1 * torch.randn(D, generator=g, device="cuda")).half()
    return w, b, torch.zeros(B, dtype=torch.int32, device="cuda")


def then_gate_norm(run):
    """run, then gate_norm's own kernel (the gate from p's columns 2 D .. 3 D)."""
    def both(state, cache, qk, rest):
        z = run(state, cache, qk, rest)
        w, b, _ = rest["norm"]
        return blk.gate_norm(z.flatten(1), qk["p"][:, 2 * D:3 * D], w, b, 1e-6)
    return both


def fused_gn(step_qk):
    def run(state, cache, qk, rest):
        w, b, counters = rest["norm"]
        gn = GateNorm(w, b, 1e-6, 2 * D, counters)
        return step_qk(*qk_args(qk), D, rest["gamma"], rest["beta"], state, cache, advance=False, gate_norm=gn)
    return run


def clone_set(state, cache, qk, rest):
    st = state.clone()
    c = DualCache.empty_like_state(st, MB)
    for n, t in c.tensors().items():
        t.copy_(cache.tensors()[n])
    q2 = {n: (t.clone() if n == "ring" else t) for n, t in qk.items()}
    return st, c, q2, rest


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--commit", default="unknown")
    ap.add_argument("--batches", default="64,128,512")
    ap.add_argument("--m1-only", action="store_true", help="the M1 variants only")
    ap.add_argument("--gate-norm", action="store_true", help="the post-norm variants (see the module's docstring)")
    a = ap.parse_args()
    orig = tri1.dual_config
    rows = []
    gluon = {"GLUON": True, "programs_per_sm": 8, "rows": 16}
    variants = [("M1", False, "qk_prep+triton", unfused(tri1.decode_step_dual), {"GLUON": False}),
                ("M1", False, "fused triton", fused(tri1.decode_step_dual_qk), {"GLUON": False}),
                ("M1", False, "qk_prep+gluon", unfused(tri1.decode_step_dual), gluon),
                ("M1", False, "fused op, qk_prep+gluon", fused(tri1.decode_step_dual_qk), {**gluon, "GLUON_QK": False}),
                ("M1", False, "fused gluon", fused(tri1.decode_step_dual_qk), {**gluon, "GLUON_QK": True}),
                ("M2", True, "qk_prep+triton", unfused(tri2.decode_step_dual), None),
                ("M2", True, "fused triton", fused(tri2.decode_step_dual_qk), None)]
    if a.gate_norm:
        g1 = {**gluon, "GLUON_QK": True}
        variants = [("M1", False, "fused gluon + gate_norm", then_gate_norm(fused(tri1.decode_step_dual_qk)), g1),
                    ("M1", False, "fused gluon gn after loop", fused_gn(tri1.decode_step_dual_qk),
                     {**g1, "GATE_NORM": True}),
                    ("M1", False, "fused triton + gate_norm", then_gate_norm(fused(tri1.decode_step_dual_qk)),
                     {"GLUON": False}),
                    ("M1", False, "fused triton gn", fused_gn(tri1.decode_step_dual_qk),
                     {"GLUON": False, "GATE_NORM": True}),
                    ("M2", True, "fused triton + gate_norm", then_gate_norm(fused(tri2.decode_step_dual_qk)), None),
                    ("M2", True, "fused triton gn", fused_gn(tri2.decode_step_dual_qk), None)]
    if a.m1_only:
        variants = [v for v in variants if v[0] == "M1"]
    with open(a.out, "a") as fh:
        for B in [int(b) for b in a.batches.split(",")]:
            for model, mlp, name, run, over in variants:
                if over is not None:
                    tri1.dual_config = lambda b, f, dt, _o=over: {**orig(b, f, dt), **_o}
                g = torch.Generator(device="cuda").manual_seed(B)
                base = make(B, mlp, g)
                base[3]["norm"] = _norm(B)
                rec = dict(model=model, variant=name, batch=B, commit=a.commit)
                # Check: the variant's output against the PyTorch step on the same inputs (same cache and state).
                ref_set, got_set = clone_set(*base), clone_set(*base)
                ref_set[1].pos.fill_(7)
                got_set[1].pos.fill_(7)
                naive = naive2 if mlp else naive1
                ref = unfused(naive.decode_step_dual)(*ref_set)
                if a.gate_norm:
                    w, b, _ = ref_set[3]["norm"]
                    ref = ttt_block.gate_norm(ref.flatten(1), ref_set[2]["p"][:, 2 * D:3 * D], w, b, 1e-6)
                got = run(*got_set)
                assert not base[3]["norm"][2].any(), "counters not back to zero"
                err = ((got.double() - ref.double()).norm() / ref.double().norm()).item()
                ring_ok = torch.equal(ref_set[2]["ring"], got_set[2]["ring"])
                rec.update(rel_err=err, ring_equal=ring_ok, passed=bool(err < 1e-2 and ring_ok))
                nbytes = sum(t.numel() * t.element_size() for t in base[0].tensors().values())
                for pos in (7, 15):
                    sets = [clone_set(*base) for _ in range(state_sets("cuda", nbytes))]
                    for s in sets:
                        s[1].pos.fill_(pos)
                    fns = [(lambda s=s: run(*s)) for s in sets for _ in range(max(1, 16 // len(sets)))]
                    rec[f"us_pos{pos}"] = time_calls(fns, torch.device("cuda"), replays=20)["us"]
                rec["us_mean"] = (15 * rec["us_pos7"] + rec["us_pos15"]) / 16
                fh.write(json.dumps(rec) + "\n")
                fh.flush()
                rows.append(rec)
                print(json.dumps(rec), flush=True)
    tri1.dual_config = orig
    print("| model | B | variant | check | us pos 7 | us pos 15 | mean |")
    for r in rows:
        print(f"| {r['model']} | {r['batch']} | {r['variant']} | {'ok' if r['passed'] else 'FAIL %.1e' % r['rel_err']} "
              f"| {r['us_pos7']:.1f} | {r['us_pos15']:.1f} | {r['us_mean']:.1f} |")


if __name__ == "__main__":
    main()
