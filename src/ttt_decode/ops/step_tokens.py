"""The decode engine's bookkeeping after sampling, in one kernel (reference: record_tokens_reference).

After the step's argmax the engine writes each row's token into its token buffer at the step index,
makes it the next step's input and advances the index. As PyTorch ops that was five kernels a step in
the CUDA graph (`index_copy_`, the index's add and remainder, two 8-byte copies:
exp/results/h200/profile_compiled_h200_9340303/'s trace); here one program does all of it. It reads the
index once, writes every row's token into both buffers, and stores the advanced index only after a
barrier, so that no warp can read an index another warp has already advanced.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ttt_decode.ops.kernel_op import kernel_op

BLOCK = 1024  # rows a pass of the program's loop (any batch: the loop covers the rest)


@triton.jit
def _record_tokens_kernel(nxt_ptr, ids_ptr, tokens_ptr, step_ptr, B, stride_t, max_steps, BLOCK: tl.constexpr,
                          PASSES: tl.constexpr):
    step = tl.load(step_ptr)
    # A constexpr count of passes, not range(0, B, BLOCK): Triton 3.6's interpreter cannot take a loop bound
    # passed as an argument with numpy >= 2.4 (ops/kernel_op.py, interpreter_problem).
    for i in tl.static_range(PASSES):
        o = i * BLOCK + tl.arange(0, BLOCK)
        m = o < B
        t = tl.load(nxt_ptr + o, mask=m)
        tl.store(tokens_ptr + o.to(tl.int64) * stride_t + step, t, mask=m)
        tl.store(ids_ptr + o, t, mask=m)
    tl.debug_barrier()  # every warp has read step
    tl.store(step_ptr, (step + 1) % max_steps)


def record_tokens_reference(nxt, ids, tokens, step_idx, max_steps: int) -> None:
    """tokens[:, step_idx] = nxt, ids = nxt, step_idx = (step_idx + 1) % max_steps (PyTorch ops)."""
    tokens.index_copy_(1, step_idx, nxt.unsqueeze(1))
    step_idx.copy_((step_idx + 1) % max_steps)
    ids.copy_(nxt)


def _launch(nxt, ids, tokens, step_idx, max_steps: int) -> None:
    B = nxt.shape[0]
    _record_tokens_kernel[(1,)](nxt, ids, tokens, step_idx, B, tokens.stride(0), max_steps, BLOCK=BLOCK,
                                PASSES=triton.cdiv(B, BLOCK), num_warps=4)


kernel_op("record_tokens", ["Tensor nxt", "Tensor ids", "Tensor tokens", "Tensor step_idx", "int max_steps"],
          ("ids", "tokens", "step_idx"), _launch, lambda *args: None, returns="()")


def record_tokens(nxt, ids, tokens, step_idx, max_steps: int) -> None:
    """Same as record_tokens_reference: nxt, ids [B] int64, tokens [B, max_steps] int64 with contiguous
    rows, step_idx [1] int64 in [0, max_steps). On CUDA one Triton kernel (the custom op
    ttt_decode::record_tokens); elsewhere the PyTorch ops, which are cheaper there than the interpreter."""
    assert nxt.dtype == ids.dtype == tokens.dtype == step_idx.dtype == torch.int64 and tokens.stride(1) == 1, \
        "record_tokens: int64 tokens, ids and step index, token rows contiguous"
    if nxt.is_cuda:
        torch.ops.ttt_decode.record_tokens(nxt, ids, tokens, step_idx, max_steps)
    else:
        record_tokens_reference(nxt, ids, tokens, step_idx, max_steps)


def compile_offline(batch: int = 512, capability: int = 90):
    """The kernel compiled for an NVIDIA target without a GPU (Triton's bundled ptxas), for the CPU test that
    checks that it compiles and that the barrier precedes the index's store; needs TRITON_INTERPRET unset."""
    from triton.backends.compiler import GPUTarget

    sig = {"nxt_ptr": "*i64", "ids_ptr": "*i64", "tokens_ptr": "*i64", "step_ptr": "*i64", "B": "i32",
           "stride_t": "i32", "max_steps": "i32", "BLOCK": "constexpr", "PASSES": "constexpr"}
    consts = {"BLOCK": BLOCK, "PASSES": triton.cdiv(batch, BLOCK)}
    src = triton.compiler.ASTSource(fn=_record_tokens_kernel, signature=sig, constexprs=consts)
    return triton.compile(src, target=GPUTarget("cuda", capability, 32), options={"num_warps": 4})
