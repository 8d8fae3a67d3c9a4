"""Mamba-1: reference ops, fused Triton step (interpreter on CPU), model vs transformers, checkpoints, errors."""

import importlib.util
import json
import os

import pytest
import torch

from conftest import rel_err
from ttt_decode.configs import get_config
from ttt_decode.decode import DecodeSession, teacher_force
from ttt_decode.errors import MissingPackageError, UserError
from ttt_decode.models import build, load_model, randomize_
from ttt_decode.models.mamba import MambaLM, mamba_decode_cost
from ttt_decode.models.mamba_checkpoint import (
    is_mamba_config,
    load_mamba_checkpoint,
    published_state_dict,
    save_mamba_checkpoint,
    state_spaces_config,
)
from ttt_decode.ops import mamba as mops
from ttt_decode.ops.mamba import naive


# ---- seeded random op inputs (never zeros), odd sizes ----
def op_case(Bsz=3, N=11, D=40, S=16, W=4, R=5, dtype=torch.float64, state_dtype=None, seed=0, pos=2):
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)

    xz, dbc = r(Bsz, N, 2 * D), r(Bsz, N, R + 2 * S)
    return {
        "x": xz[..., :D], "z": xz[..., D:], "dt": r(Bsz, N, D, scale=0.7), "B": dbc[..., R:R + S], "C": dbc[...,
                                                                                                            R + S:],
        "A_log": (torch.rand(D, S, generator=g, dtype=torch.float64) * 2.5).to(dtype), "D": r(D),
        "dt_bias": r(D, scale=0.5) - 1.0, "w": r(D, W, scale=0.5), "bias": r(D, scale=0.3),
        "conv_state": r(Bsz, W, D), "conv_pos": torch.tensor([pos]), "ssm_state": r(Bsz, D, S).to(state_dtype or dtype),
    }


def step_through(c, t0, t1, impl="naive", conv_state=None, ssm_state=None):
    """Tokens t0..t1-1 one at a time; returns y [B, n, D] (states advanced in place, conv_pos too)."""
    conv_state = c["conv_state"] if conv_state is None else conv_state
    ssm_state = c["ssm_state"] if ssm_state is None else ssm_state
    conv_step, ssm_step = mops.pick_steps(impl)
    W, ys = conv_state.shape[1], []
    for t in range(t0, t1):
        x = c["x"][:, t]
        xc = conv_step(x, conv_state, c["conv_pos"], c["w"].t().contiguous(), c["bias"])
        ys.append(ssm_step(x, xc, c["z"][:, t], c["dt"][:, t], c["B"][:, t], c["C"][:, t], c["A_log"], c["D"],
                           c["dt_bias"], conv_state, c["conv_pos"], ssm_state))
        mops.advance_(c["conv_pos"], 1, W)
    return torch.stack(ys, 1)


def prefill_through(c, t0, t1):
    s = slice(t0, t1)
    xc = mops.conv_prefill(c["x"][:, s], c["conv_state"], c["conv_pos"], c["w"], c["bias"])
    y = mops.scan(xc, c["z"][:, s], c["dt"][:, s], c["B"][:, s], c["C"][:, s], c["A_log"], c["D"], c["dt_bias"],
                  c["ssm_state"])
    mops.advance_(c["conv_pos"], t1 - t0, c["conv_state"].shape[1])
    return y


@pytest.mark.parametrize("N,pos,split", [(11, 2, (11,)), (13, 3, (1, 4, 8)), (7, 0, (2, 5))],
                         ids=["N11-one-prefill", "N13-pieces-1-4-8", "N7-pieces-2-5"])
def test_step_by_step_equals_scan_float64(N, pos, split):
    ref, case = op_case(N=N, pos=pos), op_case(N=N, pos=pos)
    y_step = step_through(ref, 0, N)
    ys, t0 = [], 0
    for n in split:
        ys.append(prefill_through(case, t0, t0 + n))
        t0 += n
    assert rel_err(torch.cat(ys, 1), y_step) < 1e-9
    assert rel_err(case["ssm_state"], ref["ssm_state"]) < 1e-9
    assert torch.equal(case["conv_state"], ref["conv_state"]) and case["conv_pos"].item() == (pos + N) % 4


def test_scan_chunks_are_seamless(monkeypatch):
    """The memory-bounding token chunks of the scan change nothing (chunk of 3 tokens vs one chunk)."""
    a, b = op_case(N=10), op_case(N=10)
    y_one = prefill_through(a, 0, 10)
    monkeypatch.setattr(naive, "SCAN_CHUNK_ELEMENTS", 3 * 3 * 40 * 16)
    assert naive._chunk_tokens(3, 40, 16, 10) == 3
    assert rel_err(prefill_through(b, 0, 10), y_one) < 1e-12
    assert rel_err(b["ssm_state"], a["ssm_state"]) < 1e-12


# Triton's interpreter truncates float32 -> bfloat16 casts (the GPU rounds to nearest even), which
# doubles the rounding error of bf16 outputs on CPU (measured 2.0-2.4x the PyTorch op's); on the GPU
# the 2x bound holds (test_gpu_kernel_error_bound).
INTERPRETER_BF16_FACTOR = 3 if os.environ.get("TRITON_INTERPRET") == "1" else 2


def _errors_ok(tri, torch_same_dtype, ref64, exact_fp32: bool):
    """Kernel error vs float64: < 1e-5 in float32, else at most 2x the PyTorch op's in the same dtypes."""
    e_tri, e_torch = rel_err(tri, ref64), rel_err(torch_same_dtype, ref64)
    if exact_fp32:
        return e_tri < 1e-5
    factor = INTERPRETER_BF16_FACTOR if tri.dtype == torch.bfloat16 else 2
    return e_tri <= factor * e_torch + 1e-6 and e_tri < 1e-2


@pytest.mark.parametrize("act,state", [(torch.float32, torch.float32), (torch.float16, torch.float32),
                                       (torch.float16, torch.float16), (torch.bfloat16, torch.bfloat16)],
                         ids=["act32-state32", "act16-state32", "act16-state16", "actbf16-statebf16"])
@pytest.mark.parametrize("Bsz,D,S", [(5, 40, 16), (2, 24, 6)], ids=["B5-D40-S16", "B2-D24-S6"])
def test_triton_step_matches_reference(act, state, Bsz, D, S):
    """Conv output, step output, updated state and conv ring of the Triton kernels vs the float64 reference."""
    c = op_case(Bsz=Bsz, N=1, D=D, S=S, dtype=act, state_dtype=state, seed=Bsz + S, pos=3)
    x = c["x"][:, 0]

    def f64(t):
        return t.double() if t.is_floating_point() else t

    conv_args = (x, c["conv_state"], c["conv_pos"], c["w"].t().contiguous(), c["bias"])
    xc_tri = mops.conv_step(*conv_args, impl="triton")
    xc_torch = mops.conv_step(*conv_args, impl="naive")
    xc64 = mops.conv_step(*map(f64, conv_args), impl="naive")
    assert xc_tri.dtype == act and _errors_ok(xc_tri, xc_torch, xc64, act == torch.float32)
    # The step, fed the same x_c.
    args = (x, xc_torch, c["z"][:, 0], c["dt"][:, 0], c["B"][:, 0], c["C"][:, 0], c["A_log"], c["D"], c["dt_bias"])
    outs = {}
    for impl in ("triton", "naive"):
        conv, st = c["conv_state"].clone(), c["ssm_state"].clone()
        y = mops.ssm_step(*args, conv, c["conv_pos"], st, impl=impl)
        assert y.dtype == act and st.dtype == state
        outs[impl] = (y, st, conv)
    st64 = c["ssm_state"].double()
    y64 = mops.ssm_step(*map(f64, args), c["conv_state"].double(), c["conv_pos"], st64)
    exact = act == torch.float32 and state == torch.float32
    assert _errors_ok(outs["triton"][0], outs["naive"][0], y64, exact)
    assert _errors_ok(outs["triton"][1], outs["naive"][1], st64, exact or state == torch.float32)
    # The conv ring: slot conv_pos holds x, every other slot unchanged.
    expect = c["conv_state"].clone()
    expect[:, 3] = x
    assert torch.equal(outs["triton"][2], expect)


@pytest.mark.parametrize("config", [{"BLOCK_D": 16, "ROWS": 4, "num_warps": 2}, {"BLOCK_D": 32, "ROWS": 2,
                                                                                 "num_warps": 4}],
                         ids=["D16-rows4", "D32-rows2"])
def test_triton_step_other_launch_configs(config):
    """The multi-row tiles (timed in the sweep, not the default) compute the same step; B=5 leaves partial tiles."""
    from ttt_decode.ops.mamba import triton_decode

    c = op_case(Bsz=5, N=1, D=40, S=16, dtype=torch.float32, seed=21, pos=1)
    args = [c["x"][:, 0], naive.conv_step(c["x"][:, 0], c["conv_state"], c["conv_pos"], c["w"].t(), c["bias"]),
            c["z"][:, 0], c["dt"][:, 0], c["B"][:, 0], c["C"][:, 0], c["A_log"], c["D"], c["dt_bias"]]
    conv_a, st_a = c["conv_state"].clone(), c["ssm_state"].clone()
    conv_b, st_b = c["conv_state"].clone(), c["ssm_state"].clone()
    want = naive.ssm_step(*args, conv_a, c["conv_pos"], st_a)
    got = triton_decode._launch_ssm_step(*args, conv_b, c["conv_pos"], st_b, torch.full_like(want, float("nan")),
                                         config)
    assert rel_err(got, want) < 1e-5 and rel_err(st_b, st_a) < 1e-5 and torch.equal(conv_b, conv_a)


def _dispatched(fn, *args_per_batch):
    """The distinct configurations a dispatcher returns over batches on both sides of its thresholds."""
    out = []
    for args in args_per_batch:
        c = fn(*args)
        if c not in out:
            out.append(c)
    return out


def test_triton_every_dispatched_launch_config():
    """Every configuration ssm_config and conv_config can pick (small and large batch, each state dtype)
    computes the same step as the reference; D=136 leaves a partial channel tile, B=5 a partial row tile."""
    from ttt_decode.ops.mamba import triton_decode as td

    S = 16
    ssm_cfgs = _dispatched(td.ssm_config, *[(b, sd, S) for b in (1, td.LARGE_BATCH - 1, td.LARGE_BATCH, 4096)
                                            for sd in (torch.float32, torch.float16, torch.bfloat16, torch.float64)])
    conv_cfgs = _dispatched(td.conv_config, *[(b,) for b in (1, 5, td.LARGE_BATCH - 1, td.LARGE_BATCH, 4096)])
    assert len(ssm_cfgs) == 3 and len(conv_cfgs) == 2, (ssm_cfgs, conv_cfgs)
    c = op_case(Bsz=5, N=1, D=136, S=S, dtype=torch.float32, seed=22, pos=2)
    x = c["x"][:, 0]
    taps = c["w"].t().contiguous()
    want_xc = naive.conv_step(x, c["conv_state"], c["conv_pos"], taps, c["bias"])
    for cfg in conv_cfgs:
        got = td._launch_conv_step(x, c["conv_state"], c["conv_pos"], taps, c["bias"],
                                   torch.full_like(want_xc, float("nan")), cfg)
        assert rel_err(got, want_xc) < 1e-6, cfg
    args = [x, want_xc, c["z"][:, 0], c["dt"][:, 0], c["B"][:, 0], c["C"][:, 0], c["A_log"], c["D"], c["dt_bias"]]
    conv_a, st_a = c["conv_state"].clone(), c["ssm_state"].clone()
    want = naive.ssm_step(*args, conv_a, c["conv_pos"], st_a)
    for cfg in ssm_cfgs:
        conv_b, st_b = c["conv_state"].clone(), c["ssm_state"].clone()
        got = td._launch_ssm_step(*args, conv_b, c["conv_pos"], st_b, torch.full_like(want, float("nan")), cfg)
        assert rel_err(got, want) < 1e-5 and rel_err(st_b, st_a) < 1e-5 and torch.equal(conv_b, conv_a), cfg


@pytest.mark.parametrize("wdtype", [torch.float32, torch.float16, torch.bfloat16])
def test_add_rms_norm_matches_rmsnorm_module(wdtype):
    """The fused block boundary equals `h + delta` then models.common.RMSNorm, reference and kernel."""
    from ttt_decode.models.common import RMSNorm

    g = torch.Generator().manual_seed(9)
    h = torch.randn(5, 72, generator=g) * 3  # [B, d] float32 residual
    delta = torch.randn(5, 72, generator=g).to(wdtype)
    norm = RMSNorm(72, 1e-5, dtype=wdtype)
    with torch.no_grad():
        norm.weight.copy_(1 + 0.3 * torch.randn(72, generator=g))
    h0 = h.clone()
    want_h = h + delta.to(h.dtype)
    want_x = norm(want_h)
    for impl in ("naive", "triton"):
        h_new, x = mops.add_rms_norm(h, delta, norm.weight, 1e-5, impl=impl)
        assert h_new.dtype == torch.float32 and x.dtype == wdtype
        assert torch.equal(h_new, want_h)
        tol = 1e-6 if wdtype == torch.float32 else (2e-3 if wdtype == torch.float16 else 2e-2)
        assert rel_err(x, want_x) < tol, impl
    assert torch.equal(h, h0)  # inputs untouched


@pytest.mark.parametrize("wdtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("parts", [2, 4])
def test_add_rms_norm_adds_k_split_partials(parts, wdtype):
    """delta as out_proj's K-split partial sums [s, B, d] (ops.split_k): added left to right in the residual dtype,
    the reference and the kernel alike (h bitwise equal), then the same RMSNorm."""
    from ttt_decode.ops.split_k import sum_parts

    g = torch.Generator().manual_seed(10)
    h = torch.randn(5, 72, generator=g) * 3
    delta = torch.randn(parts, 5, 72, generator=g).to(wdtype)
    w = (1 + 0.3 * torch.randn(72, generator=g)).to(wdtype)
    want_h = h + sum_parts(delta, h.dtype)
    outs = {impl: mops.add_rms_norm(h, delta, w, 1e-5, impl=impl) for impl in ("naive", "triton")}
    for impl, (h_new, x) in outs.items():
        assert torch.equal(h_new, want_h), impl
    tol = 1e-6 if wdtype == torch.float32 else (2e-3 if wdtype == torch.float16 else 2e-2)
    assert rel_err(outs["triton"][1], outs["naive"][1]) < tol


def _scan_inputs(c):
    """The scan's inputs as the model hands them over: x_c from conv_prefill ([B, D, N] in memory), z and
    B, C views of wider projections."""
    xc = mops.conv_prefill(c["x"], c["conv_state"].clone(), c["conv_pos"].clone(), c["w"], c["bias"])
    return (xc, c["z"], c["dt"], c["B"], c["C"], c["A_log"], c["D"], c["dt_bias"])


@pytest.mark.parametrize("act,state", [(torch.float32, torch.float32), (torch.float16, torch.float32),
                                       (torch.float16, torch.float16), (torch.bfloat16, torch.bfloat16)],
                         ids=["act32-state32", "act16-state32", "act16-state16", "actbf16-statebf16"])
@pytest.mark.parametrize("Bsz,N,D,S", [(5, 13, 40, 16), (2, 1, 24, 6), (3, 2, 72, 16)],
                         ids=["B5-N13-D40-S16", "B2-N1-D24-S6", "B3-N2-D72-S16"])
def test_triton_scan_matches_reference(act, state, Bsz, N, D, S):
    """The one-launch prefill scan against the float64 reference: every token's output and the state it
    leaves, from a random (non-zero) starting state; the output NaN-poisoned, so an unwritten token fails."""
    from ttt_decode.ops.mamba import triton_scan

    c = op_case(Bsz=Bsz, N=N, D=D, S=S, dtype=act, state_dtype=state, seed=Bsz + N + S)
    args = _scan_inputs(c)
    st_tri, st_torch = c["ssm_state"].clone(), c["ssm_state"].clone()
    out = torch.full(args[0].shape, float("nan"), dtype=act)
    y_tri = triton_scan._launch_scan(*[t if t.stride(2) == 1 else t.contiguous() for t in args[:5]], *args[5:],
                                     st_tri, out)
    y_torch = naive.scan(*args, st_torch)
    st64 = c["ssm_state"].double()
    y64 = naive.scan(*(t.double() for t in args), st64)
    assert y_tri.dtype == act and st_tri.dtype == state
    assert _errors_ok(y_tri, y_torch, y64, act == torch.float32)
    # Every token: within the bound, where a token's own PyTorch error is measured over few elements and
    # can be small by chance, of the larger of it and the PyTorch error over all tokens. The interpreter's
    # truncating bf16 casts reach 3.5x on single tokens (30 seeds), so bf16 on CPU is held to 4x here.
    e_all = rel_err(y_torch, y64)
    factor = (INTERPRETER_BF16_FACTOR + 1) if act == torch.bfloat16 else 2
    for n in range(N):
        e_tri, e_torch = rel_err(y_tri[:, n], y64[:, n]), rel_err(y_torch[:, n], y64[:, n])
        bound = 1e-5 if act == torch.float32 else factor * max(e_torch, e_all) + 1e-6
        assert e_tri < bound, (n, e_tri, e_torch, e_all)
    assert _errors_ok(st_tri, st_torch, st64, state == torch.float32)
    # The public entry point takes the same views (and copies the [B, D, N] one) to the same result.
    st_pub = c["ssm_state"].clone()
    assert torch.equal(mops.pick_scan("triton")(*args, st_pub), y_tri) and torch.equal(st_pub, st_tri)


@pytest.mark.parametrize("config", [{"BLOCK_D": 16, "num_warps": 1, "num_stages": 1},
                                    {"BLOCK_D": 128, "num_warps": 4, "num_stages": 2}], ids=["D16-w1", "D128-w4"])
def test_triton_scan_other_launch_configs(config):
    """Tiles narrower and wider than the channels (D=40: partial tiles) compute the same scan."""
    from ttt_decode.ops.mamba import triton_scan

    c = op_case(Bsz=3, N=9, D=40, S=16, dtype=torch.float32, seed=5)
    args = [t if t.dim() < 3 or t.stride(2) == 1 else t.contiguous() for t in _scan_inputs(c)]
    st_a, st_b = c["ssm_state"].clone(), c["ssm_state"].clone()
    want = naive.scan(*args, st_a)
    got = triton_scan._launch_scan(*args, st_b, torch.full_like(want, float("nan")), config)
    assert rel_err(got, want) < 1e-5 and rel_err(st_b, st_a) < 1e-5


def test_model_prefill_uses_the_triton_scan():
    assert tiny("float32", "mamba_triton").layers[0].mixer.scan is mops.pick_scan("triton")
    assert tiny("float32").layers[0].mixer.scan is naive.scan


def test_custom_ops_registered_for_compile():
    """Schema (mutates_args), fake implementations and dispatch of both ops pass torch.library.opcheck."""
    c = op_case(Bsz=2, N=1, D=24, S=8, dtype=torch.float32, seed=3)
    x = c["x"][:, 0]
    conv_args = (x, c["conv_state"], c["conv_pos"], c["w"].t().contiguous(), c["bias"])
    torch.library.opcheck(torch.ops.ttt_decode.mamba_conv_step.default, conv_args,
                          test_utils=("test_schema", "test_faketensor"))
    xc = naive.conv_step(*conv_args)
    ssm_args = (x, xc, c["z"][:, 0], c["dt"][:, 0], c["B"][:, 0], c["C"][:, 0], c["A_log"], c["D"], c["dt_bias"],
                c["conv_state"], c["conv_pos"], c["ssm_state"])
    torch.library.opcheck(torch.ops.ttt_decode.mamba_ssm_step.default, ssm_args,
                          test_utils=("test_schema", "test_faketensor"))
    from ttt_decode.ops.mamba import triton_scan  # noqa: F401 (registers mamba_scan)

    scan_case = op_case(Bsz=2, N=3, D=24, S=8, dtype=torch.float32, seed=4)
    scan_args = [t if t.dim() < 3 or t.stride(2) == 1 else t.contiguous() for t in _scan_inputs(scan_case)]
    torch.library.opcheck(torch.ops.ttt_decode.mamba_scan.default, (*scan_args, scan_case["ssm_state"]),
                          test_utils=("test_schema", "test_faketensor"))
    torch.library.opcheck(torch.ops.ttt_decode.mamba_add_rms_norm.default,
                          (c["x"][:, 0].float(), c["z"][:, 0], c["D"], 1e-5), test_utils=("test_schema",
                                                                                          "test_faketensor"))


def tiny(dtype="float64", inner_net="mamba_ref", seed=1):
    return randomize_(build("mamba-tiny", inner_net=inner_net, dtype=dtype, device="cpu"), seed=seed)


@pytest.mark.parametrize("n_prompt", [1, 2, 3, 4, 5, 9], ids=lambda n: f"prompt{n}")
def test_prefill_then_decode_equals_full_forward_float64(n_prompt):
    model = tiny()
    ids = torch.randint(0, 500, (3, 15), generator=torch.Generator().manual_seed(n_prompt))
    full = model(ids)
    assert rel_err(teacher_force(model, ids, n_prompt), full) < 1e-9


def test_state_conv_taps_follow_the_weights():
    """The state's tap-major conv weights (what the decode conv reads) are the parameters transposed and
    contiguous, and reset_state refreshes them after the weights change; decode steps on that reset state then
    use the new weights (token by token they equal the full forward of the changed model)."""
    model = tiny()
    state = model.allocate_state(2)
    assert len(state.taps) == len(model.layers)
    for block, taps in zip(model.layers, state.taps):
        assert taps.is_contiguous() and torch.equal(taps, block.mixer.conv1d.weight.t())
    with torch.no_grad():
        for block in model.layers:
            block.mixer.conv1d.weight.mul_(-2.0)
    model.reset_state(state)
    for block, taps in zip(model.layers, state.taps):
        assert torch.equal(taps, block.mixer.conv1d.weight.t())
    ids = torch.randint(0, 500, (2, 6), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        steps = torch.stack([model.step(ids[:, t], state) for t in range(ids.shape[1])], 1)
    assert rel_err(steps, model(ids)) < 1e-9


def test_prefill_in_pieces_equals_one_prefill_float64():
    model = tiny()
    ids = torch.randint(0, 500, (2, 14), generator=torch.Generator().manual_seed(5))
    state = model.allocate_state(2)
    a = torch.cat([model.prefill(ids[:, :3], state), model.prefill(ids[:, 3:4], state), model.prefill(ids[:, 4:],
                                                                                                      state)], 1)
    assert rel_err(a, model(ids)) < 1e-9
    assert state.conv_pos.item() == 14 % 4


def test_triton_model_matches_reference_model_float32():
    ref, tri = tiny("float32"), tiny("float32", "mamba_triton")
    assert (ref.inner_net, tri.inner_net) == ("mamba_ref", "mamba_triton")
    ids = torch.randint(0, 500, (3, 10), generator=torch.Generator().manual_seed(2))
    a, b = teacher_force(ref, ids, 2), teacher_force(tri, ids, 2)
    assert rel_err(b, a) < 1e-5
    for sd in (torch.float16, torch.bfloat16):
        lo = teacher_force(tri, ids, 2, state_dtype=sd)
        assert 0 < rel_err(lo, a) < 5e-2, sd


@pytest.mark.parametrize("inner_net", ["mamba_ref", "mamba_triton"])
def test_matches_transformers_mamba(inner_net):
    """Same weights in transformers' MambaForCausalLM: prefill logits and 20 decode steps, float32, 1e-4."""
    pytest.importorskip("transformers")
    from ttt_decode.models.baselines import HFMambaLM

    ours = tiny("float32", inner_net)
    hf = HFMambaLM(ours)
    assert not hf.supports_cuda_graph
    ids = torch.randint(0, 500, (2, 25), generator=torch.Generator().manual_seed(11))
    a, b = teacher_force(ours, ids, 5), teacher_force(hf, ids, 5)
    for t in range(25):
        assert rel_err(a[:, t], b[:, t]) < 1e-4, t
    # Not vacuous: other weights give other logits.
    assert rel_err(teacher_force(tiny("float32", inner_net, seed=2), ids[:, :6], 5), b[:, :6]) > 1e-2


@pytest.mark.parametrize("safetensors", [False, True], ids=["bin", "safetensors"])
def test_checkpoint_roundtrip_state_spaces_layout(tmp_path, safetensors):
    model = tiny("float32")
    ids = torch.randint(0, 500, (2, 7), generator=torch.Generator().manual_seed(4))
    path = save_mamba_checkpoint(model, tmp_path / "ckpt", safetensors=safetensors)
    cfg = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert is_mamba_config(cfg) and cfg["d_model"] == 64 and cfg["ssm_cfg"]["d_state"] == 16
    loaded = load_mamba_checkpoint(path, dtype="float32", device="cpu")
    assert loaded.weights_source == f"checkpoint:{os.path.abspath(path)}"
    assert loaded.inner_net == "mamba_ref" and loaded.config.padded_vocab_size == 504
    assert torch.equal(loaded(ids), model(ids))
    names = set(published_state_dict(model))
    assert {"backbone.embedding.weight", "backbone.layers.1.mixer.A_log", "backbone.norm_f.weight",
            "lm_head.weight"} <= names


def test_transformers_checkpoint_loads(tmp_path):
    """A directory written by transformers' own save_pretrained loads and gives the same logits."""
    pytest.importorskip("transformers")
    from ttt_decode.models.baselines import HFMambaLM

    model = tiny("float32")
    HFMambaLM(model).hf.save_pretrained(tmp_path / "hf")
    loaded = load_mamba_checkpoint(tmp_path / "hf", dtype="float32", device="cpu")
    ids = torch.randint(0, 500, (2, 6), generator=torch.Generator().manual_seed(8))
    assert torch.equal(loaded(ids), model(ids))


def _write(tmp_path, tensors, cfg=None):
    d = tmp_path / "bad"
    d.mkdir(exist_ok=True)
    (d / "config.json").write_text(json.dumps(cfg or state_spaces_config(get_config("mamba-tiny"))))
    torch.save(tensors, d / "pytorch_model.bin")
    return d


def _good(model):
    return {k: v.clone() for k, v in published_state_dict(model).items()}


def _swap(t, a, b):
    t[a], t[b] = t[b], t[a]
    return t


def _drop(t, a):
    del t[a]
    return t


def _rename(t, a, b):
    t[b] = t.pop(a)
    return t


L0 = "backbone.layers.0.mixer."


@pytest.mark.parametrize("edit,message", [
    (lambda t: _rename(t, L0 + "in_proj.weight", L0 + "inproj.weight"),
     "unexpected tensor 'backbone.layers.0.mixer.inproj"),
    (lambda t: _drop(t, "backbone.layers.1.mixer.A_log"), "missing tensor 'backbone.layers.1.mixer.A_log'"),
    (lambda t: _swap(t, L0 + "in_proj.weight", L0 + "out_proj.weight"),
     "backbone.layers.0.mixer.in_proj.weight' has shape"),
    (lambda t: t.update({L0 + "x_proj.weight": t[L0 + "x_proj.weight"].t().contiguous()}) or t,
     "x_proj.weight' has shape"),
    (lambda t: t.update({L0 + "conv1d.weight": t[L0 + "conv1d.weight"].squeeze(1)}) or t, "conv1d.weight' has shape"),
    (lambda t: t.update({"backbone.layers.2.norm.weight": torch.ones(64)}) or t,
     "unexpected tensor 'backbone.layers.2"),
    (lambda t: t.update({"lm_head.weight": t["lm_head.weight"] + 1}) or t, "lm_head.weight differs from the embedding"),
    (lambda t: t.update({L0 + "D": t[L0 + "D"].long()}) or t, "has dtype torch.int64"),
], ids=["renamed", "missing", "shuffled", "transposed", "conv-2d", "extra-layer", "untied-head", "int-dtype"])
def test_bad_checkpoint_tensors_name_the_tensor(tmp_path, edit, message):
    d = _write(tmp_path, edit(_good(tiny("float32"))))
    with pytest.raises(UserError, match=message.replace("(", r"\(")):
        load_mamba_checkpoint(d, dtype="float32", device="cpu")


def test_bad_checkpoint_files(tmp_path):
    model = tiny("float32")
    with pytest.raises(UserError, match="does not exist"):
        load_mamba_checkpoint(tmp_path / "nowhere", device="cpu")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no config.json"):
        load_mamba_checkpoint(tmp_path / "empty", device="cpu")
    d = _write(tmp_path, _good(model))
    os.remove(d / "pytorch_model.bin")
    with pytest.raises(UserError, match="no weights in"):
        load_mamba_checkpoint(d, device="cpu")
    (d / "pytorch_model.bin").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="weights_only=True"):
        load_mamba_checkpoint(d, device="cpu")
    (d / "config.json").write_text("{ not json")
    with pytest.raises(UserError, match="not valid JSON"):
        load_mamba_checkpoint(d, device="cpu")
    cfg = state_spaces_config(model.config)
    cfg["ssm_cfg"]["layer"] = "Mamba2"
    d = _write(tmp_path, _good(model), cfg)
    with pytest.raises(UserError, match="only Mamba-1"):
        load_mamba_checkpoint(d, device="cpu")
    d = _write(tmp_path, _good(model))
    with pytest.raises(UserError, match="unknown inner net 'mamba_fast' for a Mamba model"):
        load_mamba_checkpoint(d, device="cpu", inner_net="mamba_fast")
    assert not is_mamba_config({"model_type": "llama", "hidden_size": 8}) and not is_mamba_config([])


def test_unknown_impl_and_bad_state_get_clear_errors():
    with pytest.raises(UserError, match="unknown inner net 'mlp_2_dual' for a Mamba model; choose one of mamba_ref"):
        build("mamba-tiny", inner_net="mlp_2_dual", device="cpu")
    with pytest.raises(UserError, match="unknown Mamba op implementation"):
        mops.pick_steps("cuda")
    model = tiny("float32")
    with pytest.raises(UserError, match="state dtype"):
        model.allocate_state(2, torch.int32)
    with pytest.raises(UserError, match="batch must be a positive integer"):
        model.allocate_state(0)
    with pytest.raises(UserError, match="state was allocated for 2"):
        model.prefill(torch.zeros(3, 4, dtype=torch.int64), model.allocate_state(2))


def _hide(monkeypatch, name):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a, **k: None if n == name else real(n, *a, **k))


def test_baselines_refused_when_package_missing(monkeypatch):
    _hide(monkeypatch, "mamba_ssm")
    with pytest.raises(MissingPackageError, match="pip install mamba-ssm causal-conv1d --no-build-isolation"):
        load_model("mamba-ssm:mamba-1.4b", device="cpu")
    _hide(monkeypatch, "transformers")
    with pytest.raises(MissingPackageError, match="pip install transformers"):
        load_model("hf:state-spaces/mamba-1.4b", device="cpu")


def test_baseline_names_checked():
    with pytest.raises(UserError, match="baselines exist for Mamba models"):
        load_model("hf:ttt-tiny", device="cpu")
    with pytest.raises(UserError, match="unknown model 'mamba-9b'"):
        load_model("hf:mamba-9b", device="cpu")
    with pytest.raises(UserError, match="drop --inner_net"):
        load_model("hf:mamba-tiny", inner_net="mamba_ref", device="cpu")
    if importlib.util.find_spec("mamba_ssm") is not None:
        with pytest.raises(UserError, match="needs a CUDA GPU"):
            load_model("mamba-ssm:mamba-tiny", device="cpu")


def test_hf_baseline_has_no_cuda_graph():
    pytest.importorskip("transformers")
    hf = load_model("hf:mamba-tiny", dtype="float32", device="cpu")
    assert hf.weights_source == "random(seed=0)" and hf.inner_net == "hf_transformers"
    with pytest.raises(UserError, match="cannot capture its step in a CUDA graph"):
        DecodeSession(hf, 2, cuda_graph=True)
    assert DecodeSession(hf, 2).cuda_graph is False


def test_hf_baseline_decodes_as_ours_without_deprecated_arguments():
    """hf:mamba-tiny (transformers' MambaForCausalLM on our weights) decodes our logits through prefill and
    step, passing its cache under the name the installed transformers takes (no FutureWarning)."""
    import warnings

    pytest.importorskip("transformers")
    hf = load_model("hf:mamba-tiny", dtype="float32", device="cpu")
    ours = load_model("mamba-tiny", inner_net="mamba_ref", dtype="float32", device="cpu")
    ids = torch.randint(0, 500, (2, 12), generator=torch.Generator().manual_seed(3))
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        a = teacher_force(hf, ids, 4)
    assert rel_err(a, teacher_force(ours, ids, 4)) < 1e-4


def test_decode_cost_of_mamba_1_4b():
    """From the config: 2.8 GB fp16 weights; at B=512 the fp16 ssm state read + written is 6.4 GB (ANCHORS)."""
    model = MambaLM(get_config("state-spaces/mamba-1.4b"), dtype=torch.float16, device="meta")
    cost = model.decode_cost(512, torch.float16)
    assert 2.7e9 < cost["weight_bytes"] < 2.9e9
    assert cost["state_bytes"] == 48 * 512 * (2 * 4096 * 16 * 2 + 4 * 4096 * 2)
    assert model.state_bytes_per_seq() == 48 * (4096 * 16 * 4 + 4 * 4096 * 2)
    n_params = sum(p.numel() for p in model.parameters())
    assert 1.3e9 < n_params < 1.45e9
    # FLOPs: 2 per matmul weight per token dominate
    assert 2 * 512 * (n_params - 48 * (4096 * 18 + 4096 * 5 + 2048)) <= cost["flops"] < 2.1 * 512 * n_params
    assert mamba_decode_cost(model.config, 1, 0, torch.float16, torch.float32)["state_bytes"] == \
        48 * (2 * 4096 * 16 * 4 + 4 * 4096 * 2)


@pytest.mark.parametrize("kernel", ["mamba_step_triton", "mamba_step_ref"])
def test_micro_case_runs_and_counts_bytes(kernel):
    from ttt_decode.bench.mamba_micro import micro_case

    fn, nbytes, flops = micro_case(kernel, 3, torch.float32, "cpu", model="mamba-tiny")
    y = fn()
    assert y.shape == (3, 128) and torch.isfinite(y).all()
    assert nbytes == 2 * 3 * 128 * 16 * 4 + 6 * 3 * 128 * 2 + 2 * 3 * 16 * 2 + 128 * 18 * 2 and flops > 0
    with pytest.raises(UserError, match="unknown Mamba micro kernel"):
        micro_case("mamba_step_cuda", 3, torch.float32, "cpu")


@pytest.mark.gpu
@pytest.mark.parametrize("split", ["0", "4"], ids=["plain", "split-k"])
@pytest.mark.parametrize("state_dtype", [torch.float32, torch.float16])
def test_gpu_graph_decode_matches_reference(state_dtype, split, monkeypatch):
    """mamba-130m fp16, fused kernel in a CUDA graph vs the float32 PyTorch reference path; split-k: out_proj as 4
    K-split partial sums (TTT_DECODE_SPLIT_K=4), which add_rms_norm's kernel adds."""
    from ttt_decode.decode.check import reference_model

    monkeypatch.setenv("TTT_DECODE_SPLIT_K", split)

    model = build("mamba-130m", inner_net="mamba_triton", dtype="float16", device="cuda")
    ref = reference_model(model, "mamba_ref", torch.float32)
    ids = torch.randint(0, model.vocab_size, (8, 40), device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    a = teacher_force(model, ids, 8, cuda_graph=True, state_dtype=state_dtype)
    b = teacher_force(ref, ids, 8, state_dtype=torch.float32)
    for t in range(40):
        assert rel_err(a[:, t], b[:, t]) < 1e-2, t


@pytest.mark.gpu
@pytest.mark.parametrize("act,state", [(torch.float16, torch.float32), (torch.float16, torch.float16),
                                       (torch.bfloat16, torch.bfloat16)], ids=["fp16-fp32", "fp16-fp16", "bf16-bf16"])
def test_gpu_kernel_error_bound(act, state):
    """mamba-1.4b layer shapes on the GPU: the fused step's error is at most 2x the PyTorch op's."""
    c = op_case(Bsz=33, N=1, D=4096, S=16, R=128, dtype=act, state_dtype=state, seed=1)
    c = {k: v.cuda() for k, v in c.items()}
    x = c["x"][:, 0]
    xc = mops.conv_step(x, c["conv_state"], c["conv_pos"], c["w"].t().contiguous(), c["bias"])
    args = (x, xc, c["z"][:, 0], c["dt"][:, 0], c["B"][:, 0], c["C"][:, 0], c["A_log"], c["D"], c["dt_bias"])
    outs = {}
    for impl in ("triton", "naive"):
        st = c["ssm_state"].clone()
        outs[impl] = (mops.ssm_step(*args, c["conv_state"].clone(), c["conv_pos"], st, impl=impl), st)
    st64 = c["ssm_state"].double()
    y64 = mops.ssm_step(*(t.double() for t in args), c["conv_state"].double(), c["conv_pos"], st64)
    for i, ref in ((0, y64), (1, st64)):
        e_tri, e_torch = rel_err(outs["triton"][i], ref), rel_err(outs["naive"][i], ref)
        assert e_tri <= 2 * e_torch + 1e-6 and e_tri < 1e-2, (i, e_tri, e_torch)


@pytest.mark.gpu
@pytest.mark.parametrize("act,state", [(torch.float16, torch.float32), (torch.float16, torch.float16),
                                       (torch.bfloat16, torch.bfloat16)], ids=["fp16-fp32", "fp16-fp16", "bf16-bf16"])
def test_gpu_scan_error_bound(act, state):
    """mamba-1.4b layer shapes, 300 tokens: the Triton scan's error is at most 2x the PyTorch scan's, for
    every token's output and the final state."""
    c = op_case(Bsz=3, N=300, D=4096, S=16, R=128, dtype=act, state_dtype=state, seed=2)
    c = {k: v.cuda() for k, v in c.items()}
    args = _scan_inputs(c)
    outs = {}
    for impl in ("triton", "naive"):
        st = c["ssm_state"].clone()
        outs[impl] = (mops.pick_scan(impl)(*args, st), st)
    st64 = c["ssm_state"].double()
    y64 = naive.scan(*(t.double() for t in args), st64)
    for n in (0, 1, 150, 299):
        e_tri, e_torch = rel_err(outs["triton"][0][:, n], y64[:, n]), rel_err(outs["naive"][0][:, n], y64[:, n])
        assert e_tri <= 2 * e_torch + 1e-6 and e_tri < 1e-2, (n, e_tri, e_torch)
    e_tri, e_torch = rel_err(outs["triton"][1], st64), rel_err(outs["naive"][1], st64)
    assert e_tri <= 2 * e_torch + 1e-6 and e_tri < 1e-2, (e_tri, e_torch)
