"""The SwiGLU gate_up kernel (ops.swiglu_gemm) against a float64 reference with the PyTorch path's roundings,
for every configuration its dispatcher picks (under TRITON_INTERPRET=1 on CPU, at real shapes on a GPU); its op
schema; its build for sm_90 (tensor-core wgmma); and the model that runs it (TTT_DECODE_FUSED_SWIGLU)."""

import pytest
import torch
import torch.nn.functional as F

from conftest import rel_err, run_compiled_offline
from ttt_decode.errors import UserError
from ttt_decode.ops import swiglu_gemm as sg

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# One unit in the last place of each dtype, relative: the kernel sums over K in float32 in another order than the
# float64 reference, so a product can round to the neighbouring value before silu and the multiply.
ULP = {torch.float32: 1e-5, torch.float16: 2 ** -10, torch.bfloat16: 2 ** -7}


def reference(x, w):
    """silu(gate) * up with gate and up rounded to x's dtype, silu rounded, the product rounded (PyTorch's
    fp16/bf16 path), the sums over K in float64."""
    n = w.shape[0] // 2
    prod = x.double() @ w.double().t()
    g, u = prod[:, :n].to(x.dtype).float(), prod[:, n:].to(x.dtype).float()
    return (F.silu(g).to(x.dtype).float() * u).to(x.dtype)


def run(M, N, K, dtype, device, config):
    g = torch.Generator().manual_seed(M + N + K)
    x = torch.randn(M, K, generator=g).to(dtype).to(device)
    w = (torch.randn(2 * N, K, generator=g) / K ** 0.5).to(dtype).to(device)
    out = sg.launch(x, w, config)
    ref = reference(x.cpu(), w.cpu())
    assert out.shape == (M, N) and out.dtype == dtype
    err = (out.cpu().float() - ref.float()).abs() / ref.float().abs().clamp_min(1e-2)
    assert err.max() <= 4 * ULP[dtype], (err.max().item(), err.argmax().item())
    if dtype != torch.float32:  # most values exactly the reference's: they differ where a sum sits on a boundary
        assert (out.cpu() == ref).float().mean() > 0.9


@pytest.mark.parametrize("key", list(DTYPES))
@pytest.mark.parametrize("M,N,K", [(64, 128, 128), (70, 136, 80), (3, 20, 48)], ids=["even", "ragged", "tiny"])
@pytest.mark.parametrize("batch", [64, 512], ids=["cfg-small", "cfg-large"])
def test_swiglu_gemm_matches_reference(M, N, K, key, batch):
    """Each configuration config_for picks (by decode batch), on shapes its tiles divide (no masks: EVEN) and on
    shapes they do not (masked rows, columns and K)."""
    run(M, N, K, DTYPES[key], "cpu", sg.config_for(batch, N, K))


def test_dispatcher_configs():
    small, large = sg.config_for(64, 5504, 2048), sg.config_for(512, 5504, 2048)
    assert small["BLOCK_M"] == 64 and large["BLOCK_M"] == 128
    assert sg.even(512, 5504, 2048, large) and not sg.even(70, 5504, 2048, large)


def test_op_schema_and_fake():
    x, w = torch.randn(3, 32, dtype=torch.float16), torch.randn(40, 32, dtype=torch.float16)
    torch.library.opcheck(torch.ops.ttt_decode.swiglu_gate_up.default, (x, w),
                          test_utils=("test_schema", "test_faketensor"))


def test_bad_inputs_are_one_line_errors():
    x = torch.randn(3, 32)
    with pytest.raises(UserError, match=r"needs x \[M, K\] and w \[2 N, K\]"):
        sg.swiglu_gate_up(x, torch.randn(41, 32))
    with pytest.raises(UserError, match="must share one dtype"):
        sg.swiglu_gate_up(x, torch.randn(40, 32, dtype=torch.float16))
    with pytest.raises(UserError, match="contiguous rows"):
        sg.swiglu_gate_up(torch.randn(32, 3).t(), torch.randn(40, 32))


def test_builds_for_sm90_with_tensor_cores():
    """Compiled for sm_90 with Triton's bundled ptxas (no GPU): the products are wgmma (not the older mma.sync),
    the loads async copies (the pipelined loop), for both configurations, without spills."""
    code = ("from ttt_decode.ops import swiglu_gemm as s\n"
            "for m in (64, 512):\n"
            "    k = s.compile_offline(M=m)\n"
            "    p = k.asm['ptx']\n"
            "    print('wgmma.mma_async' in p, 'mma.sync' in p, 'cp.async' in p, 'local' in p)")
    out = run_compiled_offline(code)
    assert out == ["True", "False", "True", "False"] * 2, out


def test_model_step_with_the_fused_swiglu(monkeypatch):
    """TTT_DECODE_FUSED_SWIGLU=1: a model with Triton kernels runs its MLP's first product and activation as the one
    kernel in every layer's step (and nowhere in prefill), with the logits of the unfused model to float32
    rounding over a mini-batch boundary; the PyTorch path never uses it; another value is a one-line error
    before anything is built."""
    from ttt_decode.models import build

    ids = torch.randint(0, 500, (3, 20), generator=torch.Generator().manual_seed(3))
    P = 12  # steps from mini-batch position P (a fresh cache), across the mini-batch end at 16
    logits = {}
    for switch in ("0", "1"):
        monkeypatch.setenv("TTT_DECODE_FUSED_SWIGLU", switch)
        torch.manual_seed(0)
        model = build("ttt-tiny", inner_net="mlp_1_dual_triton", dtype="float32", device="cpu")
        assert all(block.mlp.fused_act == (switch == "1") for block in model.layers)
        calls = []
        real = sg.swiglu_gate_up
        monkeypatch.setattr(sg, "swiglu_gate_up", lambda *a: calls.append(1) or real(*a))
        state = model.allocate_state(3)
        model.prefill(ids[:, :2], state)
        assert not calls
        state.pos.fill_(P)
        logits[switch] = [model.step(ids[:, t], state) for t in range(P, ids.shape[1] - 2)]
        monkeypatch.setattr(sg, "swiglu_gate_up", real)
        assert len(calls) == (model.config.num_layers * (ids.shape[1] - 2 - P) if switch == "1" else 0)
    for t, (a, b) in enumerate(zip(logits["0"], logits["1"])):
        assert rel_err(b, a) < 1e-5, t
    plain = build("ttt-tiny", inner_net="mlp_1_dual", dtype="float32", device="cpu")
    assert not any(block.mlp.fused_act for block in plain.layers)
    monkeypatch.setenv("TTT_DECODE_FUSED_SWIGLU", "on")
    with pytest.raises(UserError, match="TTT_DECODE_FUSED_SWIGLU='on' is not 0 or 1"):
        build("ttt-tiny", inner_net="mlp_1_dual_triton", dtype="float32", device="cpu")


@pytest.mark.gpu
@pytest.mark.parametrize("key", ["fp16", "bf16"])
@pytest.mark.parametrize("M", [64, 256, 512, 1024, 70])
def test_gpu_swiglu_gemm_matches_reference(M, key):
    """ttt-1b's MLP (N 5504, K 2048) at decode batches, each with the configuration the dispatcher picks."""
    run(M, 5504, 2048, DTYPES[key], "cuda", None)


@pytest.mark.gpu
@pytest.mark.parametrize("inner", ["mlp_1_dual_triton", "mlp_2_dual_triton"])
def test_gpu_model_with_split_k_and_fused_swiglu(inner, monkeypatch):
    """ttt-1b's geometry (4 layers), fp16, B = 64 in a CUDA graph: with the down projection split 2 ways and the
    SwiGLU kernel, the logits are the plain model's within fp16 rounding over 40 teacher-forced tokens (two
    mini-batch ends), and the graph replays the eager step bitwise."""
    from ttt_decode.decode.engine import teacher_force
    from ttt_decode.models import build

    ids = torch.randint(0, 50000, (64, 40), device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    out = {}
    for name, split, fused in (("plain", "0", "0"), ("both", "2", "1")):
        monkeypatch.setenv("TTT_DECODE_SPLIT_K", split)
        monkeypatch.setenv("TTT_DECODE_FUSED_SWIGLU", fused)
        torch.manual_seed(0)
        model = build("ttt-profile", inner_net=inner, dtype="float16", device="cuda")
        out[name] = teacher_force(model, ids, 4, cuda_graph=True)
        if name == "both":
            assert torch.equal(out[name], teacher_force(model, ids, 4, cuda_graph=False))
    for t in range(4, 40):
        assert rel_err(out["both"][:, t], out["plain"][:, t]) < 1e-2, t
