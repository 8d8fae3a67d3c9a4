"""Reference TTT inner loops: dual decode = primal decode = prefill, in float64 (DESIGN section 4)."""

import pytest
import torch

from conftest import rel_err
from ttt_decode.ops import ttt_linear, ttt_mlp
from ttt_decode.ops.ttt_common import DualCache, gelu_tanh, gelu_tanh_bwd, ln_fused_l2_bwd, ln_fwd
from ttt_inputs import make_case

OPS = {"M1": (ttt_linear, False), "M2": (ttt_mlp, True)}


def decode_all(op, case, cache_kind, N=None):
    state = case.state()
    cache = case.dual_cache(state) if cache_kind == "dual" else case.primal_cache(state)
    N = N or case.q.shape[2]
    outs = [op.decode_step(*case.token(t), state, cache) for t in range(N)]
    return torch.stack(outs, dim=2), state, cache


def settled(op, state, cache, c):
    """The inner model's state: M2's dual cache may hold the pending term of W1 (ttt_mlp.naive.DEFER_W1),
    applied here to a copy."""
    state = state.clone()
    if op is ttt_mlp and isinstance(cache, DualCache):
        ttt_mlp.naive.settle_w1(state, cache.clone(), c)
    return state


@pytest.mark.parametrize("name", OPS)
@pytest.mark.parametrize("f,N", [(16, 53), (8, 35)], ids=["f16-N53", "f8-N35"])
def test_dual_equals_primal_equals_prefill(name, f, N):
    op, mlp = OPS[name]
    case = make_case(B=2, H=3, f=f, N=N, mlp=mlp, seed=hash((name, f)) % 1000)
    out_dual, st_dual, cache_dual = decode_all(op, case, "dual")
    st_dual = settled(op, st_dual, cache_dual, case.c)
    out_primal, st_primal, _ = decode_all(op, case, "primal")
    st_pre = case.state()
    out_pre = op.prefill(case.q, case.k, case.v, case.eta, case.c, case.gamma, case.beta, st_pre)
    assert N // 16 >= 2 and N % 16
    assert rel_err(out_dual, out_pre) < 1e-9
    assert rel_err(out_primal, out_pre) < 1e-9
    for k, t in st_dual.tensors().items():
        assert rel_err(t, st_primal.tensors()[k]) < 1e-9, k
        assert rel_err(t, st_pre.tensors()[k]) < 1e-9, k
    assert cache_dual.pos.item() == N % 16


@pytest.mark.parametrize("name", OPS)
@pytest.mark.parametrize("cache_kind", ["dual", "primal"])
def test_prefill_state_equals_token_by_token(name, cache_kind):
    """Prefill in pieces of odd lengths leaves the same state and cache as decoding one by one."""
    op, mlp = OPS[name]
    case = make_case(B=2, H=2, f=8, N=45, mlp=mlp, seed=7)
    out_ref, st_ref, cache_ref = decode_all(op, case, cache_kind)
    state = case.state()
    cache = case.dual_cache(state) if cache_kind == "dual" else case.primal_cache(state)
    outs, t0 = [], 0
    for n in (5, 20, 1, 19):
        s = slice(t0, t0 + n)
        outs.append(op.prefill(case.q[:, :, s], case.k[:, :, s], case.v[:, :, s], case.eta[:, :, s], case.c,
                               case.gamma, case.beta, state, cache))
        t0 += n
    assert rel_err(torch.cat(outs, 2), out_ref) < 1e-9
    st_ref, state = settled(op, st_ref, cache_ref, case.c), settled(op, state, cache, case.c)
    for k, t in state.tensors().items():
        assert rel_err(t, st_ref.tensors()[k]) < 1e-9, k
    assert cache.pos.item() == cache_ref.pos.item() == 45 % 16
    if cache_kind == "dual":
        n_valid = 45 % 16
        for k in cache.tensors():
            if k != "pos":
                assert rel_err(getattr(cache, k)[:, :, :n_valid], getattr(cache_ref, k)[:, :, :n_valid]) < 1e-9
    else:
        for k, t in cache.tensors().items():
            assert rel_err(t.double(), getattr(cache_ref, k).double()) < 1e-9, k


def test_m2_deferred_w1_is_the_same_inner_model(monkeypatch):
    """TTT-MLP's deferred W1 update (naive.DEFER_W1): the same outputs as the current-state convention at every
    position of three mini-batches; after each mini-batch the state differs by exactly the pending row's
    rank-1 term (cache row b-1: this mini-batch's last k and eta g1), which settle_w1 applies and clears."""
    case = make_case(B=2, H=2, f=8, N=40, mlp=True, seed=5)
    b = case.c.shape[0]
    runs = {}
    for defer in (False, True):
        monkeypatch.setattr(ttt_mlp.naive, "DEFER_W1", defer)
        state, cache = case.state(), None
        cache = case.dual_cache(state)
        outs = []
        for t in range(40):
            outs.append(ttt_mlp.decode_step(*case.token(t), state, cache))
            if t == 2 * b - 1:
                runs[defer, "at_end"] = (state.clone(), cache.clone())
        runs[defer] = (torch.stack(outs, 2), state, cache)
    (out_cur, st_cur, _), (out_def, st_def, cache_def) = runs[False], runs[True]
    assert rel_err(out_def, out_cur) < 1e-12
    # At the end of the second mini-batch: the pending row is its last token's, and W1 misses its term.
    st_e, cache_e = runs[True, "at_end"]
    k_c, g_c = cache_e.k[:, :, b - 1], cache_e.g1[:, :, b - 1]
    assert rel_err(k_c, case.k[:, :, 2 * b - 1]) < 1e-15 and g_c.abs().min() > 0
    term = case.c[b - 1] * k_c.unsqueeze(-1) * g_c.unsqueeze(-2)  # [B,H,f,F]
    assert rel_err(st_e.W1 - term, runs[False, "at_end"][0].W1) < 1e-12
    assert rel_err(st_e.W1, runs[False, "at_end"][0].W1) > 1e-6  # it was pending
    # settle_w1 applies it and clears the row; with the convention off it changes nothing.
    ttt_mlp.naive.settle_w1(st_def, cache_def, case.c)
    assert cache_def.k[:, :, b - 1].abs().max() == 0 and cache_def.g1[:, :, b - 1].abs().max() == 0
    for k, t in st_def.tensors().items():
        assert rel_err(t, st_cur.tensors()[k]) < 1e-12, k
    monkeypatch.setattr(ttt_mlp.naive, "DEFER_W1", False)
    before = st_cur.clone()
    ttt_mlp.naive.settle_w1(st_cur, runs[False][2], case.c)
    assert all(torch.equal(t, before.tensors()[k]) for k, t in st_cur.tensors().items())


def test_m2_prefill_settles_a_pending_term_before_whole_mini_batches(monkeypatch):
    """With the deferred W1 term: decode up to past a mini-batch end (a pending W1 term), then prefill across more
    than a whole mini-batch (chunked: the rest of this mini-batch token by token, a whole one as matrices, which
    start from the state alone, then a remainder): the same outputs and inner model as decoding every token."""
    monkeypatch.setattr(ttt_mlp.naive, "DEFER_W1", True)
    case = make_case(B=2, H=2, f=8, N=60, mlp=True, seed=9)
    out_ref, st_ref, cache_ref = decode_all(ttt_mlp, case, "dual")
    state = case.state()
    cache = case.dual_cache(state)
    outs = [ttt_mlp.decode_step(*case.token(t), state, cache) for t in range(20)]
    s = slice(20, 60)  # positions 4..15, one whole mini-batch, 12 more
    out_pre = ttt_mlp.prefill(case.q[:, :, s], case.k[:, :, s], case.v[:, :, s], case.eta[:, :, s], case.c,
                              case.gamma, case.beta, state, cache)
    assert rel_err(torch.cat([torch.stack(outs, 2), out_pre], 2), out_ref) < 1e-12
    st_ref, state = settled(ttt_mlp, st_ref, cache_ref, case.c), settled(ttt_mlp, state, cache, case.c)
    for k, t in state.tensors().items():
        assert rel_err(t, st_ref.tensors()[k]) < 1e-12, k


@pytest.mark.parametrize("name", OPS)
def test_first_token_matches_formula(name):
    """At position 0 the output is q + LN(f_W(q) - c_0 eta_0 (q.k + 1) g), written out explicitly."""
    op, mlp = OPS[name]
    case = make_case(B=1, H=1, f=8, N=1, mlp=mlp, seed=3)
    q, k, v, eta = case.q[0, 0, 0], case.k[0, 0, 0], case.v[0, 0, 0], case.eta[0, 0, 0]
    gam, bet, c0 = case.gamma[0], case.beta[0], case.c[0]
    W1, b1 = case.params[0][0], case.params[1][0]
    if mlp:
        W2, b2 = case.params[2][0], case.params[3][0]
        z1 = k @ W1 + b1
        g2 = ln_fused_l2_bwd(gelu_tanh(z1) @ W2 + b2, v - k, gam, bet)
        g1 = (W2 @ g2) * gelu_tanh_bwd(z1)
        zq1 = q @ W1 + b1 - c0 * eta * (q @ k + 1) * g1
        xq = gelu_tanh(zq1)
        z = xq @ W2 + b2 - c0 * eta * (xq @ gelu_tanh(z1) + 1) * g2
    else:
        g = ln_fused_l2_bwd(k @ W1 + b1, v - k, gam, bet)
        z = q @ W1 + b1 - c0 * eta * (q @ k + 1) * g
    expected = q + ln_fwd(z, gam, bet)
    state = case.state()
    out = op.decode_step(*case.token(0), state, case.dual_cache(state))
    assert rel_err(out[0, 0], expected) < 1e-12


def test_ln_fused_l2_bwd_matches_autograd():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 16, dtype=torch.float64, generator=g, requires_grad=True)
    tgt, gam, bet = (torch.randn(4, 16, dtype=torch.float64, generator=g) for _ in range(3))
    (0.5 * (ln_fwd(x, gam, bet) - tgt).pow(2).sum()).backward()
    assert rel_err(ln_fused_l2_bwd(x.detach(), tgt, gam, bet), x.grad) < 1e-12
    y = torch.randn(64, dtype=torch.float64, generator=g, requires_grad=True)
    torch.nn.functional.gelu(y, approximate="tanh").sum().backward()
    assert rel_err(gelu_tanh_bwd(y.detach()), y.grad) < 1e-12
    assert rel_err(gelu_tanh(y.detach()), torch.nn.functional.gelu(y.detach(), approximate="tanh")) < 1e-14


@pytest.mark.parametrize("name", OPS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_reduced_precision_state_close_to_float64(name, dtype):
    op, mlp = OPS[name]
    case = make_case(B=2, H=2, f=16, N=34, mlp=mlp, seed=11)
    ref, _, _ = decode_all(op, case, "dual")
    low = case.to(dtype=dtype)
    out, _, _ = decode_all(op, low, "dual")
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    assert out.dtype == dtype
    assert rel_err(out, ref) < tol
