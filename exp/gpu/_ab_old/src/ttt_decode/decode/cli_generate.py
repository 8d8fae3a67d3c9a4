"""`ttt-decode generate`: build a model, prefill a random prompt, generate, print tokens/s.

    ttt-decode generate --model-name ttt-tiny --batch 4 --promptlen 16 --genlen 32 --device cpu
"""

from __future__ import annotations

import torch

from ttt_decode.cli_args import add_decode_args, add_model_args
from ttt_decode.decode.engine import check_memory, generate, is_oom
from ttt_decode.decode.sampling import Sampling
from ttt_decode.dtypes import parse_dtype
from ttt_decode.errors import UserError
from ttt_decode.models import load_model


def add_arguments(p):
    add_model_args(p)
    add_decode_args(p, batch=4, promptlen=16, genlen=32, genlen_help="new tokens per sequence")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default); > 0 samples")
    p.add_argument("--top_k", "--top-k", dest="top_k", type=int, default=0,
                   help="sample from the k most likely (0 = all)")
    p.add_argument("--show", type=int, default=8, help="how many generated ids of the first sequence to print")


def main(args) -> int:
    model = load_model(args.model_name, inner_net=args.inner_net, dtype=args.dtype, device=args.device, seed=args.seed)
    state_dtype = parse_dtype(args.state_dtype) if args.state_dtype else None
    sampling = Sampling(temperature=args.temperature, top_k=args.top_k)
    cuda_graph = model.device.type == "cuda" and not args.no_cg
    # Before the prompt [B, P] and the state exist: a batch over the device's memory is one line, not a traceback.
    check_memory(model, args.batch, state_dtype, args.promptlen + args.genlen, args.promptlen, last_only=True)
    gen = torch.Generator(device="cpu").manual_seed(args.seed)
    try:
        prompt = torch.randint(0, model.vocab_size, (args.batch, args.promptlen), generator=gen).to(model.device)
        out = generate(model, prompt, args.genlen, sampling=sampling, cuda_graph=cuda_graph,
                       compile=args.use_compile, state_dtype=state_dtype)
    except (RuntimeError, MemoryError) as e:
        if not is_oom(e):
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"out of memory at batch {args.batch} on {model.device} ({first[:200]}); use a smaller "
                        "--batch") from None
    steps = out["decode_steps"]
    tok_s = args.batch * steps / out["decode_s"] if steps and out["decode_s"] > 0 else float("nan")
    inner = f" inner_net={getattr(model, 'inner_net', '-')}" if hasattr(model, "inner_net") else ""
    print(f"model={args.model_name}{inner} device={model.device.type} dtype={model.dtype} batch={args.batch} "
          f"promptlen={args.promptlen} genlen={args.genlen} cuda_graph={cuda_graph} compile={args.use_compile}")
    print(f"cold start {out['cold_start_s']:.2f} s | prefill {out['prefill_s'] * 1e3:.1f} ms | "
          f"decode {steps} steps in {out['decode_s']:.3f} s = {tok_s:,.0f} tokens/s")
    print("first sequence, generated ids:", out["tokens"][0, : args.show].tolist())
    return 0
