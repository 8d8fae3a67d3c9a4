"""The dual kernels with qk_prep folded into their prologue (`decode_step_dual_qk` of ttt_linear and ttt_mlp
triton_decode.py) against what they replace: ops.ttt_block.qk_prep followed by the inner step.

Each case decodes a mini-batch and three tokens (every position, one end-of-mini-batch update, the conv
ring's slots several times) with a fresh random projection row p = [q0 | v | g | lr] each token, and
checks the output and the ring after every token and the state and cache at the end. Errors are
measured against the float64 reference (ops.ttt_block.qk_prep and the naive step in float64 on the same
rounded inputs): float32 within 1e-5; float16 / bfloat16 at most 2x the error of the same PyTorch path
run in that dtype (plus 1e-6), and under 2e-2. Outputs are NaN-poisoned and the cache starts NaN-filled,
so an unwritten output or a read of a stale row fails. Under TRITON_INTERPRET=1 on CPU at small shapes;
the GPU cases (pytest -m gpu) at ttt-1b shapes, where M1 fp16 from B = 128 on runs the Gluon kernel with
qk_prep's work in it (GLUON_QK), or qk_prep's kernel and then the Gluon kernel (GLUON_QK off)."""

import importlib

import pytest
import torch

from conftest import rel_err
from ttt_decode.ops import ttt_block
from ttt_decode.ops.ttt_common import DualCache, GateNorm, TTTState
from ttt_inputs import has_pending_row, poison_dual_cache

W, MB = 4, 16
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _mods(mlp):
    pkg = "ttt_decode.ops." + ("ttt_mlp" if mlp else "ttt_linear")
    return importlib.import_module(pkg + ".naive"), importlib.import_module(pkg + ".triton_decode")


class _Path:
    """One way through the tokens: its tensors (the inputs rounded to act, then held in dtype) and state."""

    def __init__(self, P, act, dtype, device, nan_cache=False):
        def cv(x):
            return x.to(act).to(device=device, dtype=dtype)
        self.t = {n: (cv(x) if isinstance(x, torch.Tensor) else x) for n, x in P.items() if n != "params"}
        self.t["cos"], self.t["sin"] = P["cos"], P["sin"]  # the model's float32 table on every path
        self.ring = self.t["ring"]
        self.state = TTTState.from_params(P["B"], dtype, *[cv(x) for x in P["params"]])
        self.cache = DualCache.empty_like_state(self.state, MB)
        if nan_cache:
            poison_dual_cache(self.cache)

    def args(self, p, conv_pos, rot_pos, H, lr_col):
        t = self.t
        return (p, self.ring, conv_pos, t["wq"], t["bq"], t["wk"], t["bk"], t["cos"], t["sin"], rot_pos, t["lr_bias"],
                t["token_idx"], 1.0, H, lr_col)


def _params(B, H, f, mlp, bias, seed, device, width=W):
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=1.0):
        return torch.randn(*shape, generator=g, dtype=torch.float64) * scale
    D, F = H * f, 4 * f if mlp else f
    params = (r(H, f, F, scale=f ** -0.5), r(H, F, scale=0.1))
    if mlp:
        params += (r(H, F, f, scale=F ** -0.5), r(H, f, scale=0.1))
    angles = torch.arange(MB)[:, None] * torch.rand(f // 2, generator=g)[None]
    return dict(B=B, params=params, wq=r(width, D, scale=0.5), wk=r(width, D, scale=0.5),
                bq=r(D, scale=0.1) if bias else None, bk=r(D, scale=0.1) if bias else None,
                cos=angles.cos().float().to(device), sin=angles.sin().float().to(device),
                lr_bias=r(H, scale=0.3), token_idx=r(MB, scale=0.1), gamma=1.0 + r(H, f, scale=0.1),
                beta=r(H, f, scale=0.1), ring=r(B, width, D))


def run_fused(mlp, B, H, f, key, bias=True, device="cpu", N=MB + 3, seed=0, poison=None, width=W, gate_norm=None):
    """gate_norm "gate" / "nogate": the kernel also does ops.ttt_block.gate_norm of its rows (GateNorm, the gate
    from p's columns 2 D .. 3 D, or none), checked against qk_prep, the step and gate_norm, and the row
    counters are zero after every call."""
    dtype = DTYPES[key]
    naive, tri = _mods(mlp)
    D = H * f
    lr_col = 3 * D
    P = _params(B, H, f, mlp, bias, seed, device, width)
    paths = {"ref": _Path(P, dtype, torch.float64, device), "same": _Path(P, dtype, dtype, device),
             "kernel": _Path(P, dtype, dtype, device, nan_cache=True)}
    conv_pos, rot_pos = [torch.zeros(1, dtype=torch.int64, device=device) for _ in range(2)]
    g = torch.Generator().manual_seed(seed + 1)
    if gate_norm:
        norm_w = (1.0 + torch.randn(D, generator=g, dtype=torch.float64) * 0.1).to(dtype)
        norm_b = (torch.randn(D, generator=g, dtype=torch.float64) * 0.1).to(dtype)
        norm = {n: (norm_w.to(device, torch.float64 if n == "ref" else dtype),
                    norm_b.to(device, torch.float64 if n == "ref" else dtype)) for n in paths}
        counters = torch.zeros(B + 1, dtype=torch.int32, device=device)  # one more than needed: never touched
        g_col = 2 * D if gate_norm == "gate" else -1

    def bound(got, same, ref, what):
        e, e_same = rel_err(got, ref), rel_err(same, ref)
        if key == "fp32":
            assert e < 1e-5, (what, e)
        else:
            assert e <= 2 * e_same + 1e-6 and e < 2e-2, (what, e, e_same)

    for t in range(N):
        p_low = torch.randn(B, 3 * D + H, generator=g).to(dtype).to(device)
        outs = {}
        for name, path in paths.items():
            p = p_low.double() if name == "ref" else p_low
            v = p[:, D:2 * D].view(B, H, f)
            args = path.args(p, conv_pos, rot_pos, H, lr_col)
            if name == "kernel":
                if poison:
                    poison()
                gn = GateNorm(*norm[name], 1e-6, g_col, counters) if gate_norm else None
                outs[name] = tri.decode_step_dual_qk(*args, D, path.t["gamma"], path.t["beta"], path.state,
                                                     path.cache, advance=False, gate_norm=gn)
            else:
                q, k, eta, c = ttt_block.qk_prep(*args)
                outs[name] = naive.decode_step_dual(q, k, v, eta, c, path.t["gamma"], path.t["beta"], path.state,
                                                    path.cache, advance=False)
                if gate_norm:
                    gate = p[:, 2 * D:3 * D] if g_col >= 0 else None
                    outs[name] = ttt_block.gate_norm(outs[name].flatten(1), gate, *norm[name], 1e-6)
        if gate_norm:
            assert outs["kernel"].shape == (B, D) and not counters.any(), (t, counters)
        else:
            assert outs["kernel"].shape == (B, H, f)
        assert outs["kernel"].dtype == dtype
        assert torch.isfinite(outs["kernel"]).all(), t
        bound(outs["kernel"], outs["same"], outs["ref"], f"out token {t}")
        torch.testing.assert_close(paths["kernel"].ring, paths["same"].ring, atol=0, rtol=0)  # q0 itself: exact
        for path in paths.values():
            path.cache.pos.copy_((path.cache.pos + 1) % MB)
        conv_pos.copy_((conv_pos + 1) % width)
        rot_pos.copy_((rot_pos + 1) % MB)
    k_st, s_st, r_st = (paths[n].state.tensors() for n in ("kernel", "same", "ref"))
    for n in k_st:
        bound(k_st[n], s_st[n], r_st[n], f"state.{n}")
    rows = slice(0, N % MB)
    k_c, s_c, r_c = (paths[n].cache.tensors() for n in ("kernel", "same", "ref"))
    for n in k_c:
        if n != "pos":
            bound(k_c[n][:, :, rows], s_c[n][:, :, rows], r_c[n][:, :, rows], f"cache.{n}")
    if has_pending_row(paths["kernel"].cache):  # TTT-MLP's pending W1 term is state too
        for n in ("k", "g1"):
            bound(k_c[n][:, :, MB - 1], s_c[n][:, :, MB - 1], r_c[n][:, :, MB - 1], f"cache.{n}[b-1]")


@pytest.fixture
def nan_empty(monkeypatch):
    orig = torch.empty

    def empty(*args, **kwargs):
        t = orig(*args, **kwargs)
        return t.fill_(float("nan")) if t.is_floating_point() else t

    return lambda: monkeypatch.setattr(torch, "empty", empty)


@pytest.mark.parametrize("key", list(DTYPES))
@pytest.mark.parametrize("mlp", [False, True], ids=["M1", "M2"])
def test_fused_qk_matches_qk_prep_then_step(mlp, key, nan_empty):
    run_fused(mlp, B=2, H=2, f=16, key=key, poison=nan_empty)


@pytest.mark.parametrize("key", ["fp32", "fp16"])
def test_fused_qk_m2_deferred_w1(key, nan_empty, monkeypatch):
    """The fused-prologue M2 step with the deferred W1 term (TTT_DECODE_M2_DEFER_W1=1: c_{b-1} from the token
    coefficients in the kernel) against qk_prep then the reference in the same convention, pending rows too."""
    from ttt_decode.ops.ttt_mlp import naive as m2_naive
    monkeypatch.setattr(m2_naive, "DEFER_W1", True)
    run_fused(True, B=2, H=2, f=16, key=key, poison=nan_empty)


def _fold(mlp, fold, monkeypatch):
    """The dispatcher's GATE_NORM forced on or off (the post-norm in the kernel, or gate_norm's kernel after it)."""
    _, tri = _mods(mlp)
    default = tri.dual_config
    monkeypatch.setattr(tri, "dual_config", lambda *a: {**default(*a), "GATE_NORM": fold})


@pytest.mark.parametrize("key,gate,fold", [("fp32", "gate", True), ("fp16", "gate", True), ("bf16", "gate", True),
                                           ("fp16", "nogate", True), ("fp16", "gate", False)])
@pytest.mark.parametrize("mlp", [False, True], ids=["M1", "M2"])
def test_fused_qk_gate_norm(mlp, key, gate, fold, nan_empty, monkeypatch):
    """The model's fused step with the post-norm and gate, o_proj's input, against qk_prep, the step and gate_norm
    at every position: folded into the kernel (counters back to zero; 3 heads, so that a row's last head is
    counted by whichever program gets there last), or gate_norm's kernel after it (the dispatcher's choice)."""
    _fold(mlp, fold, monkeypatch)
    run_fused(mlp, B=3, H=3, f=16, key=key, poison=nan_empty, gate_norm=gate)


@pytest.mark.parametrize("mlp", [False, True], ids=["M1", "M2"])
def test_fused_qk_gate_norm_masked_head_dim(mlp, nan_empty, monkeypatch):
    """The post-norm folded over rows of H f = 72 columns (padded to 128 and masked) with f = 24."""
    _fold(mlp, True, monkeypatch)
    run_fused(mlp, B=2, H=3, f=24, key="fp16", bias=False, poison=nan_empty, N=4, gate_norm="gate")


def test_gate_norm_fold_dispatch():
    """Where the dispatchers fold the post-norm: M2 from GATE_NORM_MIN_BATCH on, M1 nowhere (measured, in their
    comments)."""
    _, tri1 = _mods(False)
    _, tri2 = _mods(True)
    for B in (1, 64, 128, 512, 2048):
        assert not tri1.dual_config(B, 64, torch.float16)["GATE_NORM"]
        assert tri2.dual_config(B, 64, torch.float16)["GATE_NORM"] == (B >= tri2.GATE_NORM_MIN_BATCH)


@pytest.mark.parametrize("mlp", [False, True], ids=["M1", "M2"])
def test_fused_qk_masked_head_dim_no_bias(mlp, nan_empty):
    """f = 24 (the kernels' head dim padded to 32 and masked) and convs without a bias."""
    run_fused(mlp, B=2, H=3, f=24, key="fp16", bias=False, poison=nan_empty)


def test_fused_qk_op_schema_and_fake():
    """The fused ops' schemas (the ring and the state are mutated) and fakes are right for torch.compile."""
    B, H, f = 2, 2, 16
    D = H * f
    P = _params(B, H, f, True, True, 0, "cpu")
    for mlp in (False, True):
        _mods(mlp)  # registers the ops
        path = _Path(P if mlp else {**P, "params": P["params"][:2]}, torch.float32, torch.float32, "cpu")
        p = torch.randn(B, 3 * D + H)
        pos = torch.zeros(1, dtype=torch.int64)
        t = path.t
        args = (p, path.ring, pos, t["wq"], t["bq"], t["wk"], t["bk"], t["cos"], t["sin"], pos.clone(), t["lr_bias"],
                t["token_idx"], t["gamma"], t["beta"], path.cache.pos, *[x for n, x in path.state.tensors().items()],
                *[x for n, x in path.cache.tensors().items() if n != "pos"], 1.0, 3 * D, D)
        op = torch.ops.ttt_decode.ttt_mlp_dual_step_qk if mlp else torch.ops.ttt_decode.ttt_linear_dual_step_qk
        torch.library.opcheck(op.default, args, test_utils=("test_schema", "test_faketensor"))
        # With the post-norm and gate: y [B, D] out, the counters mutated (and zero again).
        gn_op = torch.ops.ttt_decode.ttt_mlp_dual_step_qk_gn if mlp else torch.ops.ttt_decode.ttt_linear_dual_step_qk_gn
        counters = torch.zeros(B, dtype=torch.int32)
        gn_args = (*args[:-3], torch.ones(D), torch.zeros(D), counters, *args[-3:], 2 * D, 1e-6)
        torch.library.opcheck(gn_op.default, gn_args, test_utils=("test_schema", "test_faketensor"))
        assert gn_op(*gn_args).shape == (B, D) and not counters.any()


def test_fused_qk_bad_input_is_one_line():
    """v's columns outside the projection row, or a batch other than the state's, fail at the boundary
    with the problem named."""
    from ttt_decode.errors import UserError
    _, tri = _mods(False)
    B, H, f = 2, 2, 16
    D = H * f
    P = _params(B, H, f, False, True, 0, "cpu")
    path = _Path(P, torch.float16, torch.float16, "cpu")
    pos = torch.zeros(1, dtype=torch.int64)
    p = torch.randn(B, 3 * D + H, dtype=torch.float16)
    with pytest.raises(UserError, match="not inside p"):
        tri.decode_step_dual_qk(*path.args(p, pos, pos, H, 3 * D), 3 * D, path.t["gamma"], path.t["beta"],
                                path.state, path.cache)
    with pytest.raises(UserError, match="does not match"):
        p3 = torch.randn(B + 1, 3 * D + H, dtype=torch.float16)
        ring3 = torch.randn(B + 1, W, D, dtype=torch.float16)
        args = path.args(p3, pos, pos, H, 3 * D)
        tri.decode_step_dual_qk(p3, ring3, *args[2:], D, path.t["gamma"], path.t["beta"], path.state, path.cache)


@pytest.mark.gpu
@pytest.mark.parametrize("config", [None, {"GLUON": True, "programs_per_sm": 2, "rows": 32}, {"GLUON_QK": False}],
                         ids=["default", "gluon-P2-R32", "gluon-qk_prep-first"])
@pytest.mark.parametrize("B", [16, 512])
@pytest.mark.parametrize("key", list(DTYPES))
@pytest.mark.parametrize("mlp", [False, True], ids=["M1", "M2"])
def test_gpu_fused_qk_matches_qk_prep_then_step(mlp, key, B, config, nan_empty, monkeypatch):
    """ttt-1b shapes (32 heads of 64); M1 fp16 at B = 512 takes the Gluon route (the Gluon kernel doing
    qk_prep's work; with GLUON_QK off qk_prep's kernel, then the Gluon kernel; checked), and with 2
    programs a multiprocessor each program loops over many items (and the grid is rounded to a
    multiple of the heads)."""
    if config is not None and (mlp or key != "fp16"):
        pytest.skip("the Gluon configurations are M1's, fp16")
    _, tri = _mods(mlp)
    if config is not None:
        default = tri.dual_config
        monkeypatch.setattr(tri, "dual_config", lambda *a: {**default(*a), **config})
    gluon = not mlp and key == "fp16" and B == 512
    seen = _gluon_route(tri, B, 32, monkeypatch) if gluon else None
    run_fused(mlp, B=B, H=32, f=64, key=key, device="cuda", poison=nan_empty)
    if gluon:
        fused = (config or {}).get("GLUON_QK", True)
        assert seen and all(s == fused for s in seen), seen


@pytest.mark.gpu
@pytest.mark.parametrize("config", [None, {"GATE_NORM": True},
                                    {"GLUON": True, "programs_per_sm": 2, "rows": 32, "GATE_NORM": True},
                                    {"GLUON_QK": False, "GATE_NORM": True}],
                         ids=["default", "fold", "fold-gluon-P2-R32", "gluon-qk_prep-first"])
@pytest.mark.parametrize("B,gate", [(16, "gate"), (512, "gate"), (512, "nogate")])
@pytest.mark.parametrize("mlp", [False, True], ids=["M1", "M2"])
def test_gpu_fused_qk_gate_norm(mlp, B, gate, config, nan_empty, monkeypatch):
    """The model's step with the post-norm and gate at ttt-1b shapes, fp16, as dispatched (M2 folds it from
    B = 512, M1 runs gate_norm's kernel after) and folded by force: M1 at B = 512 in the Gluon kernel (its
    counts after the loop; with 2 programs a multiprocessor each program finishes many rows); with GLUON_QK off
    qk_prep's kernel, the Gluon kernel and then gate_norm's own kernel."""
    if config is not None and mlp and config != {"GATE_NORM": True}:
        pytest.skip("the Gluon configurations are M1's")
    _, tri = _mods(mlp)
    if config is not None:
        default = tri.dual_config
        monkeypatch.setattr(tri, "dual_config", lambda *a: {**default(*a), **config})
    gluon = not mlp and B == 512
    seen = _gluon_route(tri, B, 32, monkeypatch) if gluon else None
    run_fused(mlp, B=B, H=32, f=64, key="fp16", device="cuda", poison=nan_empty, gate_norm=gate)
    if gluon:
        fused = (config or {}).get("GLUON_QK", True)
        assert seen and all(s == fused for s in seen), seen


def _gluon_route(tri, B, H, monkeypatch) -> list:
    """Checks that the dispatcher's configuration at these shapes is the Gluon kernel's and that its inputs
    are supported; returns a list that records, per Gluon launch from then on, whether the launch got
    qk_prep's inputs (the kernel doing qk_prep's work) rather than q, k from qk_prep's kernel."""
    from ttt_decode.ops.ttt_linear import gluon_decode
    assert tri.dual_config(B, 64, torch.float16).get("GLUON")
    D = H * 64
    q = torch.zeros(B, H, 64, dtype=torch.float16, device="cuda")
    t = torch.zeros(B, H, 16, 64, dtype=torch.float16, device="cuda")
    st = torch.zeros(B, H, 64, 64, dtype=torch.float16, device="cuda")
    g = torch.zeros(H, 64, dtype=torch.float16, device="cuda")
    v = torch.zeros(B, 3 * D + H, dtype=torch.float16, device="cuda")[:, D:2 * D].view(B, H, 64)
    assert gluon_decode.supported(v, v, v, g, g, st, q, t, t) and gluon_decode.supported(q, q, v, g, g, st, q, t, t)
    seen = []
    launch = gluon_decode.launch

    def spy(*args, qk=None, **kw):
        seen.append(qk is not None)
        return launch(*args, qk=qk, **kw)
    monkeypatch.setattr(gluon_decode, "launch", spy)
    return seen


@pytest.mark.gpu
@pytest.mark.parametrize("width,bias,H", [(4, False, 32), (3, True, 32), (2, True, 32), (4, True, 80)],
                         ids=["W4-nobias", "W3", "W2", "W4-H80"])
def test_gpu_fused_qk_gluon_conv_widths_and_heads(width, bias, H, nan_empty, monkeypatch):
    """The Gluon kernel's qk_prep work at the conv widths it takes (2..4: its old slots are named), without
    conv biases, and with 80 heads (the grid rounded down to a multiple of 80: 1040 programs on the H200's
    132 multiprocessors, not 1056; the projection row of 3 D + H = 15440 elements keeps v's rows at a
    stride of a multiple of 16, as gluon_decode.copyable asks); M1 fp16 at B = 512, every position,
    against qk_prep then the step."""
    _, tri = _mods(False)
    seen = _gluon_route(tri, 512, H, monkeypatch)
    run_fused(False, B=512, H=H, f=64, key="fp16", bias=bias, device="cuda", poison=nan_empty, width=width)
    assert seen and all(seen), seen


@pytest.mark.gpu
def test_gpu_gluon_refuses_rows_it_cannot_copy(nan_empty):
    """40 heads: the projection row is 3 D + H = 7720 fp16 elements, 16-byte aligned but not a multiple of 16
    elements, so the compiler cannot prove cp.async's alignment (it failed to compile there). The Gluon
    kernels refuse it and the fused step runs the Triton kernel, still correct."""
    from ttt_decode.ops.ttt_linear import gluon_decode
    B = 512

    def takes(H):
        D = H * 64
        v = torch.zeros(B, 3 * D + H, dtype=torch.float16, device="cuda")[:, D:2 * D].view(B, H, 64)
        g = torch.zeros(H, 64, dtype=torch.float16, device="cuda")
        b1 = torch.zeros(B, H, 64, dtype=torch.float16, device="cuda")
        st = torch.zeros(B, H, 64, 64, dtype=torch.float16, device="cuda")
        t = torch.zeros(B, H, 16, 64, dtype=torch.float16, device="cuda")
        return gluon_decode.supported(v, v, v, g, g, st, b1, t, t)
    assert takes(80) and not takes(40)
    run_fused(False, B=B, H=40, f=64, key="fp16", device="cuda", poison=nan_empty, N=3)
