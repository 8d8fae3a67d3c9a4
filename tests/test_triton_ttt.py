"""Triton TTT decode kernels (M1/M2, dual/primal) vs the float64 reference, under TRITON_INTERPRET=1 on CPU.

Each case decodes two mini-batches plus one token (every position, both end-of-mini-batch updates)
and checks the outputs, the final state and the final cache. Errors are measured against the
reference run in float64 on the same (rounded) inputs: float32 state within 1e-5; float16 / bfloat16
at most 2x the error of the PyTorch op run in the same dtypes (plus 1e-6), and under 2e-2. Outputs are
NaN-poisoned before each call, and the dual cache starts NaN-filled, so an unwritten output or a read
of a stale cache row fails. GPU cases (pytest -m gpu) run the same checks at ttt-1b shapes.
"""

import importlib

import pytest
import torch

from conftest import rel_err, run_compiled_offline
from ttt_decode import registry
from ttt_decode.errors import UserError
from ttt_decode.ops.ttt_common import DualCache, PrimalCache, TTTState
from ttt_inputs import has_pending_row, make_case, poison_dual_cache

# The Triton TTT kernels of the registry, as readable ids: "M2-dual" -> (mlp, form).
KERNELS = {f"M{2 if i.part == 'ttt_mlp' else 1}-{i.form}": (i.part == "ttt_mlp", i.form)
           for i in registry.IMPLEMENTATIONS.values() if i.family == "ttt" and i.impl == registry.TRITON}
STATE_ACT = {"fp32": (torch.float32, torch.float32), "fp16": (torch.float16, torch.float16),
             "bf16": (torch.bfloat16, torch.bfloat16)}


def _mods(mlp, form):
    pkg = "ttt_decode.ops." + ("ttt_mlp" if mlp else "ttt_linear")
    naive = importlib.import_module(pkg + ".naive")
    tri = importlib.import_module(pkg + (".triton_decode" if form == "dual" else ".triton_primal"))
    name = "decode_step_dual" if form == "dual" else "decode_step_primal"
    return getattr(naive, name), getattr(tri, name), tri


def _cache(form, state, b, poison=False):
    cache = (DualCache if form == "dual" else PrimalCache).empty_like_state(state, b)
    if poison and form == "dual":
        poison_dual_cache(cache)
    return cache


@pytest.fixture
def nan_empty(monkeypatch):
    """torch.empty returns NaN-filled floating tensors while active (poisons the kernels' outputs)."""
    orig = torch.empty

    def empty(*args, **kwargs):
        t = orig(*args, **kwargs)
        return t.fill_(float("nan")) if t.is_floating_point() else t

    def activate():
        monkeypatch.setattr(torch, "empty", empty)
    return activate


def decode(step, case, state, cache, N, poison=None):
    outs = []
    for t in range(N):
        if poison:
            poison()
        outs.append(step(*case.token(t), state, cache))
    return torch.stack(outs, 2)


def run_and_compare(mlp, form, f, key, nan_empty, N=33, B=2, H=2, seed=0, config=None, monkeypatch=None):
    ref_step, tri_step, tri_mod = _mods(mlp, form)
    state_dtype, act = STATE_ACT[key]
    low = make_case(B=B, H=H, f=f, N=N, mlp=mlp, seed=seed).to(dtype=act)
    case64 = low.to(dtype=torch.float64)
    b = low.c.shape[0]
    st0 = low.state(dtype=state_dtype)

    st64 = TTTState(**{n: t.double() for n, t in st0.tensors().items()})
    c64 = _cache(form, st64, b)
    out64 = decode(ref_step, case64, st64, c64, N)
    st_n, c_n = st0.clone(), _cache(form, st0, b)
    out_n = decode(ref_step, low, st_n, c_n, N)
    if config is not None:
        name = "dual_config" if form == "dual" else "primal_config"
        default = getattr(tri_mod, name)
        monkeypatch.setattr(tri_mod, name, lambda *a: {**default(*a), **config})  # the config over the defaults
    st_k, c_k = st0.clone(), _cache(form, st0, b, poison=True)
    out_k = decode(tri_step, low, st_k, c_k, N, poison=nan_empty)

    assert out_k.dtype == act and torch.isfinite(out_k).all()
    assert c_k.pos.item() == c64.pos.item() == N % b
    pairs = [("out", out_k, out_n, out64)]
    pairs += [(f"state.{n}", t, st_n.tensors()[n], st64.tensors()[n]) for n, t in st_k.tensors().items()]
    if has_pending_row(c_k):
        pairs += [(f"cache.{n}[b-1]", getattr(c_k, n)[:, :, b - 1], getattr(c_n, n)[:, :, b - 1],
                   getattr(c64, n)[:, :, b - 1]) for n in ("k", "g1")]
    for n, t in c_k.tensors().items():
        if n == "pos":
            continue
        rows = slice(None) if form == "primal" else slice(0, N % b)
        pairs.append((f"cache.{n}", t[:, :, rows] if form == "dual" else t, getattr(c_n, n)[:, :, rows]
                      if form == "dual" else getattr(c_n, n), getattr(c64, n)[:, :, rows] if form == "dual"
                      else getattr(c64, n)))
    for name, got, same, ref in pairs:
        assert got.dtype == same.dtype, name
        e, e_same = rel_err(got, ref), rel_err(same, ref)
        if key == "fp32":
            assert e < 1e-5, (name, e)
        else:
            assert e <= 2 * e_same + 1e-6 and e < 2e-2, (name, e, e_same)


@pytest.mark.parametrize("key", list(STATE_ACT))
@pytest.mark.parametrize("f", [16, 64], ids=["f16", "f64"])
@pytest.mark.parametrize("kernel", list(KERNELS))
def test_kernel_matches_float64_reference(kernel, f, key, nan_empty):
    mlp, form = KERNELS[kernel]
    run_and_compare(mlp, form, f, key, nan_empty, seed=f + len(key))


# Launch configurations other than the defaults (the GPU sweeps in exp/gpu time them, so they must compute
# the same function): narrower and more F chunks, 1 warp per item, the CUDA-core update, a whole-tile
# primal (one chunk holds F); f=24: masked head dim, F=96 not a multiple of the chunk.
ALT_CONFIGS = [
    ("M2-dual", 16, {"BLOCK_F": 32, "num_warps": 2}),
    ("M2-dual", 24, {"BLOCK_F": 32, "num_warps": 1}),
    ("M2-dual", 16, {"BLOCK_F": 16, "num_warps": 1}),
    ("M2-dual", 24, {"BLOCK_F": 32, "num_warps": 1, "L2_HINTS": True, "REVERSE_B": True}),
    ("M2-dual", 24, {"BLOCK_F": 32, "num_warps": 1, "L2_HINTS": True, "REVERSE_B": True, "W2_IN_B": True}),
    ("M2-dual", 16, {"BLOCK_F": 16, "num_warps": 2, "W2_IN_B": True}),
    ("M2-dual", 24, {"BLOCK_F": 32, "num_warps": 1, "L2_HINTS": True, "REVERSE_B": True, "W2_IN_B": True,
                     "W2_UPD_COLS": 16, "maxnreg": 168}),
    ("M2-dual", 16, {"BLOCK_F": 16, "num_warps": 1, "W2_IN_B": True, "W2_UPD_COLS": 32}),
    ("M2-dual", 24, {"BLOCK_F": 32, "num_warps": 1, "W2_IN_B": True, "W2_UPD_COLS": 16, "SPLIT_B": True}),
    ("M2-dual", 16, {"BLOCK_F": 32, "num_warps": 1, "W2_IN_B": True, "SPLIT_B": True}),
    ("M2-primal", 16, {"BLOCK_F": 32, "num_warps": 2}),
    ("M2-primal", 24, {"BLOCK_F": 128, "num_warps": 4}),
    ("M2-primal", 16, {"BLOCK_F": 16, "num_warps": 1}),
    ("M2-primal", 24, {"BLOCK_F": 32, "num_warps": 2, "L2_HINTS": True, "REVERSE_B": True}),
    ("M1-dual", 16, {"num_warps": 2, "UPDATE_DOT": False}),
    ("M1-dual", 24, {"num_warps": 4, "UPDATE_DOT": True}),
    ("M1-primal", 24, {"num_warps": 1}),
]


@pytest.mark.parametrize("kernel,f,config", ALT_CONFIGS,
                         ids=[f"{k}-f{f}-" + "-".join(f"{n}{v}" for n, v in c.items()) for k, f, c in ALT_CONFIGS])
def test_other_launch_configs(kernel, f, config, nan_empty, monkeypatch):
    mlp, form = KERNELS[kernel]
    run_and_compare(mlp, form, f, "fp32", nan_empty, N=17, config=config, monkeypatch=monkeypatch)


@pytest.mark.parametrize("cols,split", [(0, False), (16, False), (16, True)],
                         ids=["from-registers", "column-slices", "column-slices-split-pass-b"])
def test_m2_dual_w2_update_in_pass_b_fp16(cols, split, nan_empty, monkeypatch):
    """W2_IN_B with fp16 state and cache: the end-of-mini-batch W2 update as one fp16 MMA per chunk, from the
    chunk in registers (W2_UPD_COLS 0) or from the chunk read again in column slices (f = 24: a masked slice),
    in pass B's one loop or in the last position's own copy of it (SPLIT_B)."""
    config = {"BLOCK_F": 32, "num_warps": 1, "L2_HINTS": True, "REVERSE_B": True, "W2_IN_B": True, "W2_UPD_COLS": cols,
              "SPLIT_B": split}
    run_and_compare(*KERNELS["M2-dual"], 24, "fp16", nan_empty, N=17, config=config, monkeypatch=monkeypatch)


DEFER_CASES = [(key, f, cfg) for key in ("fp32", "fp16", "bf16") for f, cfg in (
    (24, {"BLOCK_F": 32, "num_warps": 1, "L2_HINTS": True, "REVERSE_B": True, "W2_IN_B": True, "W2_UPD_COLS": 16,
          "SPLIT_B": True}),
    (16, {"BLOCK_F": 16, "num_warps": 2, "W2_IN_B": False}),
    (64, None))]


@pytest.mark.parametrize("key,f,config", DEFER_CASES,
                         ids=[f"{k}-f{f}-{'default' if c is None else 'split' if c.get('SPLIT_B') else 'update-pass'}"
                              for k, f, c in DEFER_CASES])
def test_m2_dual_deferred_w1_convention(key, f, config, nan_empty, monkeypatch):
    """TTT_DECODE_M2_DEFER_W1=1 (naive.DEFER_W1 True, off by default): the kernel with the deferred W1 term (pending
    row b-1 taken off pass A's products; W1 updated in the last position's pass A) against the reference in the
    same convention, across two mini-batch ends and a remainder, the pending rows compared too: the capped
    configuration's structure (split pass B, W2 in pass B, sliced), W2 in the update pass on 2 warps, and the
    dispatcher's own configuration."""
    from ttt_decode.ops.ttt_mlp import naive as m2_naive
    monkeypatch.setattr(m2_naive, "DEFER_W1", True)
    run_and_compare(*KERNELS["M2-dual"], f, key, nan_empty, N=33, config=config, monkeypatch=monkeypatch)


@pytest.mark.slow
@pytest.mark.parametrize("kernel", ["M2-dual", "M2-primal"])
def test_largest_head_dim_default_config(kernel, nan_empty):
    """f = 128 (F = 512): the dispatcher's choice for the largest heads (4 warps, 8 chunks), fp16."""
    mlp, form = KERNELS[kernel]
    run_and_compare(mlp, form, 128, "fp16", nan_empty, N=17, B=1, H=1, seed=11)


@pytest.mark.parametrize("kernel", list(KERNELS))
def test_advance_flag(kernel):
    mlp, form = KERNELS[kernel]
    _, tri_step, _ = _mods(mlp, form)
    case = make_case(B=1, H=2, f=16, N=2, mlp=mlp, seed=3).to(dtype=torch.float32)
    state = case.state()
    cache = _cache(form, state, case.c.shape[0])
    tri_step(*case.token(0), state, cache, advance=False)
    assert cache.pos.item() == 0
    tri_step(*case.token(1), state, cache)
    assert cache.pos.item() == 1


def _one_step_args(mlp, form, f=16, b=16, dtype=torch.float32, state_dtype=None):
    case = make_case(B=2, H=2, f=f, N=1, b=b, mlp=mlp, seed=5).to(dtype=dtype)
    state = case.state(dtype=state_dtype or dtype)
    return case.token(0), state, _cache(form, state, b)


@pytest.mark.parametrize("kernel", list(KERNELS))
def test_unsupported_inputs_refused(kernel):
    mlp, form = KERNELS[kernel]
    _, tri_step, _ = _mods(mlp, form)
    for f, match in ((8, "head dim 8"), (144, "head dim 144")):
        tok, state, cache = _one_step_args(mlp, form, f=f)
        with pytest.raises(UserError, match=match):
            tri_step(*tok, state, cache)
    tok, state, cache = _one_step_args(mlp, form, b=1)
    with pytest.raises(UserError, match="mini-batch size 1"):
        tri_step(*tok, state, cache)
    tok, state, cache = _one_step_args(mlp, form, dtype=torch.float64)
    with pytest.raises(UserError, match="float64"):
        tri_step(*tok, state, cache)
    tok, state, cache = _one_step_args(mlp, form, state_dtype=torch.float16)
    other = _cache("primal" if form == "dual" else "dual", state, 16)
    with pytest.raises(UserError, match="needs a"):
        tri_step(*tok, state, other)
    # A state that is not contiguous would be updated in a copy: refused, never copied.
    tok, state, cache = _one_step_args(mlp, form)
    state.W1 = state.W1.transpose(0, 1).contiguous().transpose(0, 1)
    with pytest.raises(AssertionError, match="contiguous"):
        tri_step(*tok, state, cache)


@pytest.mark.parametrize("kernel", list(KERNELS))
def test_custom_op_schema_and_fake(kernel):
    """mutates_args and the fake implementation pass torch.library.opcheck (what torch.compile relies on)."""
    mlp, form = KERNELS[kernel]
    _mods(mlp, form)  # importing the kernel's module registers its op (the test must not rely on others')
    tok, state, cache = _one_step_args(mlp, form)
    q, k, v, eta, c, gamma, beta = tok
    name = f"ttt_{'mlp' if mlp else 'linear'}_{form}_step"
    extra = [t for n, t in cache.tensors().items() if n != "pos"]
    args = (q, k, v, eta, c, gamma, beta, cache.pos, *state.tensors().values(), *extra)
    torch.library.opcheck(getattr(torch.ops.ttt_decode, name).default, args,
                          test_utils=("test_schema", "test_faketensor"))


# ---------------------------------------------------------------- GPU (pytest -m gpu)
@pytest.mark.gpu
@pytest.mark.parametrize("key", list(STATE_ACT))
@pytest.mark.parametrize("kernel", list(KERNELS))
@pytest.mark.parametrize("B,H,f", [(16, 32, 64), (64, 32, 64), (16, 8, 128)], ids=["B16-H32-f64", "B64-H32-f64",
                                                                                   "B16-H8-f128"])
def test_gpu_kernel_matches_reference(kernel, key, B, H, f):
    import ttt_decode.configs as configs
    from ttt_decode.bench.micro import check_ttt_variant
    from ttt_decode.configs import TTTConfig

    mlp, form = KERNELS[kernel]
    name = f"mlp_{2 if mlp else 1}_{form}_triton"
    cfg_name = "ttt-1b" if f == 64 else "test-f128"
    if cfg_name not in configs.CONFIGS:
        configs.CONFIGS[cfg_name] = TTTConfig(cfg_name, hidden_size=H * f, num_layers=1, num_heads=H,
                                              intermediate_size=256, vocab_size=500)
    state_dtype, act = STATE_ACT[key]
    res = check_ttt_variant(name, state_dtype, "cuda", cfg_name, act, batch=B)
    assert res["passed"], res


def test_m2_dual_register_cap_dispatch():
    """The 168-register cap (with the sliced W2 update and the split pass B) from CAP_MIN_BATCH on at f = 64 with
    fp16/bf16 state only; smaller batches, float32 state and other head dims: no cap."""
    from ttt_decode.ops.ttt_mlp import triton_decode as tri
    hi, lo = tri.CAP_MIN_BATCH, tri.CAP_MIN_BATCH // 2
    for dt in (torch.float16, torch.bfloat16):
        cfg = tri.dual_config(hi, 64, dt)
        assert cfg["maxnreg"] == 168 and cfg["W2_UPD_COLS"] and cfg["SPLIT_B"] and cfg["KEEP_W2_LAST"], cfg
        assert cfg["PREFETCH_B"] == 2 and not cfg.get("PREFETCH_A"), cfg  # pass B: cache rows and W2 rows
    for args in ((lo, 64, torch.float16), (hi, 64, torch.float32), (hi, 128, torch.float16), (hi, 32, torch.float16)):
        assert not tri.dual_config(*args).get("maxnreg"), args
        assert tri.dual_config(*args)["PREFETCH_B"] == 1, args  # cache rows only


def test_m2_dual_prefetch_reaches_ptx():
    """The dispatcher's L2 prefetches (inline PTX, which the interpreter cannot run, so CPU tests launch the
    kernels without them) compile for sm_90 with Triton's bundled ptxas; without PREFETCH_B there are none,
    and PREFETCH_A (pass A's) reaches the PTX too. Catches a flag that stops reaching the kernel and an
    inline-asm change of the installed Triton before a GPU run does."""
    code = ("import re, torch; from ttt_decode.ops.ttt_mlp import triton_decode as t\n"
            "for b, pf in ((512, None), (64, None), (512, 0), (512, 'A')):\n"
            "    cfg = t.dual_config(b, 64, torch.float16)\n"
            "    cfg = cfg if pf is None else {**cfg, 'PREFETCH_B': 0, 'PREFETCH_A': int(pf == 'A')}\n"
            "    print(len(re.findall(r'prefetch\\.global\\.L2', t.compile_offline(cfg).asm['ptx'])))")
    out = run_compiled_offline(code)
    capped, small, none, pass_a = (int(x) for x in out)
    # capped: the first chunk's two cache-row sets, then two loops (SPLIT_B) of rows + W2 rows; small: one loop;
    # PREFETCH_A (a sweep's option, not the dispatcher's): pass A's next chunk and chunk 0 before the prologue
    assert capped > small > 0 and none == 0 and pass_a > 0, out


@pytest.mark.gpu
@pytest.mark.parametrize("key", ["fp16", "bf16"])
def test_gpu_m2_dual_capped_config_matches_reference(key):
    """The M2 dual dispatcher's configuration for large batches (register cap, sliced W2 update, split pass B)
    at ttt-1b shapes against the float64 reference (test_gpu_kernel_matches_reference runs B <= 64, where the
    dispatcher picks the uncapped kernel)."""
    from ttt_decode.bench.micro import check_ttt_variant
    from ttt_decode.ops.ttt_mlp import triton_decode as tri

    state_dtype, act = STATE_ACT[key]
    cfg = tri.dual_config(512, 64, state_dtype)
    assert cfg["maxnreg"] and cfg["PREFETCH_B"]
    res = check_ttt_variant("mlp_2_dual_triton", state_dtype, "cuda", "ttt-1b", act, batch=16, config=cfg)
    assert res["passed"], res


@pytest.mark.gpu
@pytest.mark.parametrize("inner_net", ["mlp_2_dual_triton", "mlp_1_dual_triton", "mlp_2_primal_triton",
                                       "mlp_1_primal_triton"])
def test_gpu_compiled_graph_step_matches_eager(inner_net):
    """The model step with a Triton inner loop compiles with fullgraph=True and replays in a CUDA graph,
    giving the eager step's logits."""
    from ttt_decode.decode import DecodeSession
    from ttt_decode.models import build

    model = build("ttt-tiny-64", inner_net=inner_net, dtype=torch.float16, device="cuda")
    ids = torch.randint(0, 500, (4, 20), device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    eager = DecodeSession(model, 4, cuda_graph=False, compile=False, max_steps=64)
    fast = DecodeSession(model, 4, cuda_graph=True, compile=True, max_steps=64)
    for t in range(ids.shape[1]):
        a = eager.step(ids[:, t]).float()
        b = fast.step(ids[:, t]).float()
        assert rel_err(b, a) < 1e-2, t


def _m1_default(form, batch):
    from ttt_decode.ops.ttt_linear import triton_decode, triton_primal
    return (triton_decode.dual_config if form == "dual" else triton_primal.primal_config)(batch, 64, torch.float16)


def _m1_gluon(form):
    """(the Triton module whose dispatcher picks the Gluon kernel, the Gluon module) of an M1 form."""
    from ttt_decode.ops.ttt_linear import gluon_decode, gluon_primal, triton_decode, triton_primal
    return (triton_decode, gluon_decode) if form == "dual" else (triton_primal, gluon_primal)


# Each M1 form's Gluon configuration as the dispatcher picks it (B >= GLUON_MIN_BATCH), and one with many
# items per program (every buffer set reused many times).
GLUON_CONFIGS = {form: [_m1_default(form, 512), {"GLUON": True, "programs_per_sm": 2, "rows": 32}]
                 for form in ("dual", "primal")}


@pytest.mark.parametrize("form", ["dual", "primal"])
def test_m1_gluon_dispatch(form):
    """fp16 state at f = 64 from GLUON_MIN_BATCH on: the Gluon kernel; otherwise, and for other dtypes or
    head dims, the Triton kernel."""
    tri, _ = _m1_gluon(form)
    lo, hi = tri.GLUON_MIN_BATCH // 2, tri.GLUON_MIN_BATCH
    assert _m1_default(form, hi)["GLUON"]
    assert GLUON_CONFIGS[form][0]["GLUON"] and GLUON_CONFIGS[form][0]["rows"] == 16
    # The dual step's Gluon kernel does qk_prep's work itself where the model's fused op calls it.
    assert bool(_m1_default(form, hi).get("GLUON_QK")) == (form == "dual")
    for args in ((lo, 64, torch.float16), (hi, 64, torch.bfloat16), (hi, 64, torch.float32), (hi, 128, torch.float16)):
        cfg = (tri.dual_config if form == "dual" else tri.primal_config)(*args)
        assert not cfg.get("GLUON"), args


@pytest.mark.parametrize("form", ["dual", "primal"])
def test_m1_gluon_config_falls_back_on_cpu(form, nan_empty, monkeypatch):
    """A Gluon configuration where supported() refuses the inputs (here: CPU tensors) runs the Triton
    kernel, with the same results."""
    _, glu = _m1_gluon(form)
    tok, state, cache = _one_step_args(False, form, f=64, dtype=torch.float16)
    extra = [t for n, t in cache.tensors().items() if n != "pos"]
    assert not glu.supported(*tok[:3], *tok[5:7], state.W1, state.b1, *extra)
    run_and_compare(False, form, 64, "fp16", nan_empty, N=17, config=GLUON_CONFIGS[form][0], monkeypatch=monkeypatch)


def test_m1_gluon_offsets_fit_int32():
    """The Gluon kernels compute element offsets in int32: a state of 2^31 elements or more (e.g. B = 16384
    at 32 heads of f = 64) is refused, so the Triton kernel (int64 offsets) runs it."""
    from ttt_decode.ops.ttt_linear import gluon_decode
    big = torch.empty(16384, 32, 64, 64, dtype=torch.float16, device="meta")
    assert gluon_decode.offsets_fit(big[:8192]) and not gluon_decode.offsets_fit(big)


def test_m1_gluon_kernels_compile_for_sm90():
    """The Gluon kernels cannot run on CPU; compiling them for sm_90 (Triton's bundled ptxas, in a process
    without the interpreter) catches a Gluon API change of the installed Triton before a GPU run does."""
    # The fused variant (qk_prep's work in the kernel) is the only one with a sigmoid (ex2) and a store of the
    # conv ring's slot (one more st.global kind than the plain kernel's); with the post-norm folded in (g) the
    # only one with an atomic (the row counts, acq_rel at GPU scope).
    code = ("from ttt_decode.ops.ttt_linear import gluon_decode as d, gluon_primal as p; "
            "a = d.compile_offline(90).asm['ptx']; b = p.compile_offline(90).asm['ptx']; "
            "f = d.compile_offline(90, fused_qk=True).asm['ptx']; "
            "g = d.compile_offline(90, fused_qk=True, gate_norm=True).asm['ptx']; "
            "print('cp.async' in a, 'mma.sync' in a, 'cp.async' in b, 'ex2' in a, 'ex2' in f, "
            "f.count('st.global') > a.count('st.global'), 'atom' in f, 'atom.global.gpu.acq_rel' in g)")
    out = run_compiled_offline(code)
    assert out == ["True", "True", "True", "False", "True", "True", "False", "True"], out


@pytest.mark.gpu
@pytest.mark.parametrize("form,config", [(f, c) for f, cs in GLUON_CONFIGS.items() for c in cs],
                         ids=["dual-P8-R16", "dual-P2-R32", "primal-P4-R16", "primal-P2-R32"])
@pytest.mark.parametrize("B", [16, 512])
def test_gpu_m1_gluon_matches_reference(form, config, B):
    """The Gluon M1 kernels (persistent programs, cp.async double buffering) at ttt-1b shapes: every
    position of two mini-batches and one token, both end-of-mini-batch updates, against float64; with 2
    programs a multiprocessor every program loops over many items (the buffer rotation is exercised)."""
    from ttt_decode.bench.micro import check_ttt_variant

    _, glu = _m1_gluon(form)

    def t(*shape):
        return torch.zeros(shape, dtype=torch.float16, device="cuda")
    q = t(B, 32, 64)
    extra = (t(B, 32, 16, 64),) * 2 if form == "dual" else (t(B, 32, 64, 64), q)
    assert glu.supported(q, q, q, t(32, 64), t(32, 64), t(B, 32, 64, 64), q, *extra)
    assert not glu.supported(q, q, q.float(), t(32, 64), t(32, 64), t(B, 32, 64, 64), q, *extra)
    res = check_ttt_variant(f"mlp_1_{form}_triton", torch.float16, "cuda", "ttt-1b", torch.float16, batch=B,
                            config=config)
    assert res["passed"], res
