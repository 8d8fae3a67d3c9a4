"""The SwiGLU MLP's first product with its activation in the epilogue: act = silu(x W_g^T) * (x W_u^T), one launch
where the step otherwise runs two (cuBLAS's gate_up product, then the elementwise silu * up kernel).

Why: a ttt-1b block's decode step is 9 launches, 8 of them with a GEMM on one side; issue 14 asks for at most 200
launches a step (24 layers) and M1 has 224 (exp/NOTES.md, sixteenth session: the post-norm folded into M1's inner
kernel lost). gate_up and the silu * up kernel have nothing between them: at ttt-1b's B = 512 the pair writes and
reads back the [B, 2 N] product (11.3 MB) to produce [B, N] (N = 5504), and the elementwise kernel took 4.8 us a
layer on an H100 (exp/results/h100/profile_compiled_h100_9e7fd45/). Here each program computes the gate and up
tiles of the same output columns ([BLOCK_M, BLOCK_N] each, two accumulators, from W's rows j and N + j: the
weight is used as stored, [2 N, K]) and writes only the activation.

    reads  x (M K a), W (2 N K a)          writes act (M N a)          FLOPs 4 M N K

Rounding as the PyTorch path on fp16/bf16 tensors: gate and up rounded to the activation dtype (the product's
output), silu computed in float32 and rounded, the product rounded. The sums over K are float32 (tensor cores),
in another order than cuBLAS's, so the result agrees with the unfused path to the activations' rounding, not
bitwise.

Tiles: a [BLOCK_M, BLOCK_K] slice of x and two [BLOCK_N, BLOCK_K] slices of W per step of K, pipelined over
NUM_STAGES stages (Triton's loop pipelining: async copies into shared memory), products on the tensor cores
(wgmma on sm_90). Programs run M-blocks fastest, so the few row blocks of a decode batch that share a column block
of W run together and W is read from DRAM once. `config_for` picks the tiles (no autotuning: a measured table,
exp/gpu/swiglu_gemm_micro.py, belongs here once a GPU has timed it).

Not measured on a GPU yet (seventeenth session: none was lent), so the model uses it only where
TTT_DECODE_FUSED_SWIGLU=1 (models.ttt.fused_swiglu_switch; default 0).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ttt_decode.errors import UserError
from ttt_decode.ops.kernel_op import check_interpreter, interpreting, kernel_op
from ttt_decode.ops.ttt_triton_common import rne

DTYPES = (torch.float16, torch.bfloat16, torch.float32)


@triton.jit
def _swiglu_gemm_kernel(x_ptr, w_ptr, out_ptr, M, N, stride_xm, stride_wn, stride_om, K: tl.constexpr,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                        NUM_STAGES: tl.constexpr, TF32X3: tl.constexpr, EVEN: tl.constexpr, UPCAST: tl.constexpr):
    pid = tl.program_id(0)
    num_m = tl.cdiv(M, BLOCK_M)
    pid_m = pid % num_m  # M-blocks fastest: the programs that share W's column block run together
    pid_n = pid // num_m
    o_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    o_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    o_k = tl.arange(0, BLOCK_K)
    m_m = o_m < M
    m_n = o_n < N
    p_x = x_ptr + o_m[:, None].to(tl.int64) * stride_xm
    p_g = w_ptr + o_n[:, None].to(tl.int64) * stride_wn  # gate rows j
    p_u = w_ptr + (N + o_n)[:, None].to(tl.int64) * stride_wn  # up rows N + j
    acc_g = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    acc_u = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in tl.range(0, K, BLOCK_K, num_stages=NUM_STAGES):
        kk = k0 + o_k
        if EVEN:  # the tiles divide M, N and K: no masks (fewer instructions in the pipelined loop)
            a = tl.load(p_x + kk[None, :])
            wg = tl.load(p_g + kk[None, :])
            wu = tl.load(p_u + kk[None, :])
        else:
            m_k = kk < K
            a = tl.load(p_x + kk[None, :], mask=m_m[:, None] & m_k[None, :], other=0.0)
            wg = tl.load(p_g + kk[None, :], mask=m_n[:, None] & m_k[None, :], other=0.0)
            wu = tl.load(p_u + kk[None, :], mask=m_n[:, None] & m_k[None, :], other=0.0)
        if UPCAST:  # the interpreter's tl.dot of bfloat16 tiles is wrong (numpy has no bfloat16): in float32
            a, wg, wu = a.to(tl.float32), wg.to(tl.float32), wu.to(tl.float32)
        if TF32X3:  # float32 weights: three tf32 products, float32 accuracy
            acc_g = tl.dot(a, tl.trans(wg), acc_g, input_precision="tf32x3")
            acc_u = tl.dot(a, tl.trans(wu), acc_u, input_precision="tf32x3")
        else:
            acc_g = tl.dot(a, tl.trans(wg), acc_g)
            acc_u = tl.dot(a, tl.trans(wu), acc_u)
    OUT: tl.constexpr = out_ptr.dtype.element_ty
    g = rne(acc_g, OUT).to(tl.float32)
    u = rne(acc_u, OUT).to(tl.float32)
    act = rne(rne(g / (1.0 + tl.exp(-g)), OUT).to(tl.float32) * u, OUT)
    tl.store(out_ptr + o_m[:, None].to(tl.int64) * stride_om + o_n[None, :], act, mask=m_m[:, None] & m_n[None, :])


def config_for(M: int, N: int, K: int) -> dict:
    """Launch configuration (tiles, warps, pipeline stages) for act [M, N] from x [M, K]. Not yet measured
    (module docstring): 128 x 128 output tiles in two accumulators over 8 warps (two warpgroups' wgmma), 64-deep
    K steps in 3 stages (48 KB of shared memory a stage); 64-row tiles with 4 warps for decode batches up to 64,
    where 128 rows would be mostly padding."""
    if M <= 64:
        return {"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 64, "num_warps": 4, "NUM_STAGES": 3}
    return {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, "num_warps": 8, "NUM_STAGES": 3}


def even(M: int, N: int, K: int, cfg: dict) -> bool:
    """The configuration's tiles divide the problem (the kernel's EVEN: no masks)."""
    return M % cfg["BLOCK_M"] == 0 and N % cfg["BLOCK_N"] == 0 and K % cfg["BLOCK_K"] == 0


def launch(x: torch.Tensor, w: torch.Tensor, config: dict | None = None) -> torch.Tensor:
    """The kernel, unchecked (the custom op's implementation): act [M, N] for x [M, K], w [2 N, K]."""
    M, K = x.shape
    N = w.shape[0] // 2
    cfg = config or config_for(M, N, K)
    out = torch.empty((M, N), dtype=x.dtype, device=x.device)
    grid = (triton.cdiv(M, cfg["BLOCK_M"]) * triton.cdiv(N, cfg["BLOCK_N"]),)
    _swiglu_gemm_kernel[grid](x, w, out, M, N, x.stride(0), w.stride(0), out.stride(0), K=K,
                              BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], BLOCK_K=cfg["BLOCK_K"],
                              NUM_STAGES=cfg["NUM_STAGES"], TF32X3=x.dtype == torch.float32,
                              EVEN=even(M, N, K, cfg), UPCAST=interpreting() and x.dtype == torch.bfloat16,
                              num_warps=cfg["num_warps"])
    return out


kernel_op("swiglu_gate_up", ["Tensor x", "Tensor w"], (), launch,
          lambda x, w: torch.empty((x.shape[0], w.shape[0] // 2), dtype=x.dtype, device=x.device))


def swiglu_gate_up(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up for x [M, K] and gate_up's weight w [2 N, K] (gate rows first, as models.common.SwiGLU
    stores it) -> [M, N], in one kernel."""
    check_interpreter()
    if x.dim() != 2 or w.dim() != 2 or w.shape[1] != x.shape[1] or w.shape[0] % 2:
        raise UserError(f"swiglu_gate_up: needs x [M, K] and w [2 N, K], got {tuple(x.shape)} and {tuple(w.shape)}")
    if x.dtype != w.dtype or x.dtype not in DTYPES:
        raise UserError(f"swiglu_gate_up: x and w must share one dtype of float16, bfloat16, float32 (got {x.dtype}, "
                        f"{w.dtype})")
    if x.stride(1) != 1 or w.stride(1) != 1:
        raise UserError("swiglu_gate_up: x and w need contiguous rows (stride 1 along K)")
    if x.device != w.device or (x.device.type != "cuda" and not interpreting()):
        raise UserError(f"swiglu_gate_up: x and w must be on one CUDA device (or run under TRITON_INTERPRET=1), got "
                        f"{x.device} and {w.device}")
    return torch.ops.ttt_decode.swiglu_gate_up(x, w)


def compile_offline(M: int = 512, N: int = 5504, K: int = 2048, capability: int = 90, config: dict | None = None):
    """The kernel compiled for an NVIDIA target without a GPU (Triton's bundled ptxas), fp16, pointers and row
    strides 16-byte aligned, for inspection (registers, shared memory, wgmma in the SASS) and for the CPU test
    that it builds for sm_90; needs TRITON_INTERPRET unset at import."""
    from triton.backends.compiler import GPUTarget

    cfg = config or config_for(M, N, K)
    names = _swiglu_gemm_kernel.arg_names
    consts = {"K": K, "BLOCK_M": cfg["BLOCK_M"], "BLOCK_N": cfg["BLOCK_N"], "BLOCK_K": cfg["BLOCK_K"],
              "NUM_STAGES": cfg["NUM_STAGES"], "TF32X3": False, "EVEN": even(M, N, K, cfg),
              "UPCAST": False}
    sig = {n: ("constexpr" if n in consts else "*fp16" if n.endswith("_ptr") else "i32") for n in names}
    attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(names)
             if n.endswith("_ptr") or n.startswith("stride_") or n == "N"}
    src = triton.compiler.ASTSource(fn=_swiglu_gemm_kernel, signature=sig, constexprs=consts, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", capability, 32), options={"num_warps": cfg["num_warps"]})
