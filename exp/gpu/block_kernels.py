"""Launch configurations of the fused TTT block kernels (ops/ttt_block_triton.py) at ttt-1b shapes.

Each configuration is first checked against the PyTorch path on the same inputs, then timed as the
decode step runs it: one CUDA graph of many launches over rotated input sets (so each call reads from
HBM, not L2), replayed (bench.micro.time_calls, median). A first version timed each launch with
triton.testing.do_bench: at ~10 us a kernel that measured the Python launch of the custom op, 11-80
us (block_kernels_h200_96a8105.jsonl). Bytes per call from the kernels' docstring, against the copy
bandwidth measured in the same run. Writes JSON lines to --out and prints a table last.

    python3 exp/gpu/block_kernels.py --out /tmp/block.jsonl --commit <sha>
"""

import argparse
import json

import torch
from triton.testing import do_bench

from ttt_decode.bench.micro import state_sets, time_calls
from ttt_decode.ops import ttt_block as ref
from ttt_decode.ops import ttt_block_triton as tri


def copy_bandwidth() -> float:
    x = torch.empty(1 << 29, dtype=torch.uint8, device="cuda")
    y = torch.empty_like(x)
    ms = do_bench(lambda: y.copy_(x), warmup=50, rep=200)
    return 2 * x.numel() / (ms * 1e-3)


def cases(B, D=2048, H=32, W=4, mb=16, act=torch.float16):
    g = torch.Generator(device="cuda").manual_seed(0)

    def r(*shape, scale=1.0, shift=0.0, dtype=act):
        return (shift + scale * torch.randn(*shape, generator=g, device="cuda")).to(dtype)
    f = D // H
    pre = dict(h=r(B, D, dtype=torch.float32), delta=r(B, D), norm_c=r(D, scale=0.1, shift=1.0), ring=r(B, W, D),
               conv_pos=torch.tensor([1], device="cuda"), conv_w=r(D, W, scale=0.5), conv_b=r(D, scale=0.1),
               norm_s=r(D, scale=0.1, shift=1.0), eps=1e-6)
    ang = torch.arange(mb, device="cuda")[:, None] * torch.rand(f // 2, device="cuda", generator=g)[None]
    qk = dict(p=r(B, 3 * D + H), ring=r(B, W, D), conv_pos=torch.tensor([1], device="cuda"),
              wq=r(D, W, scale=0.5), bq=r(D, scale=0.1), wk=r(D, W, scale=0.5), bk=r(D, scale=0.1),
              rope_cos=ang.cos(), rope_sin=ang.sin(), pos=torch.tensor([3], device="cuda"), lr_bias=r(H),
              token_idx=r(mb, scale=0.1), base_lr=1.0, num_heads=H, lr_col=3 * D)
    a, r_, w = 2, 4, W - 1  # activation, residual item sizes; taps read
    bytes_pre = B * D * (2 * r_ + 3 * a + w * a)
    bytes_qk = B * D * (a + w * a + 2 * a + a) + B * H * (a + 4)  # q0, the taps, q and k, the slot
    return (("pre_conv", pre, tri._pre_conv_impl, ref.pre_conv_step, bytes_pre),
            ("qk_prep", qk, tri.qk_prep_launch, ref.qk_prep, bytes_qk))


def graph_us(impl, kw: dict, nbytes: int, num_warps) -> float:
    """us per launch inside one CUDA graph of launches over rotated copies of the inputs."""
    sets = [{k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in kw.items()}
            for _ in range(state_sets("cuda", nbytes))]
    fns = [(lambda a=a: impl(**a, num_warps=num_warps)) for a in sets for _ in range(max(1, 32 // len(sets)))]
    return time_calls(fns, torch.device("cuda"), replays=20)["us"]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--commit", default="unknown")
    p.add_argument("--batches", default="64,512,2048")
    p.add_argument("--warps", default="0,2,4,8,16", help="num_warps to try; 0 = the default")
    a = p.parse_args()
    bw = copy_bandwidth()
    rows = []
    with open(a.out, "a") as out:
        for B in map(int, a.batches.split(",")):
            for name, kw, impl, reference, nbytes in cases(B):
                clone = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in kw.items()}
                want = reference(**clone)
                for warps in map(int, a.warps.split(",")):
                    clone = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in kw.items()}
                    got = impl(**clone, num_warps=warps or None)
                    err = max(((g.float() - w.float()).norm() / w.float().norm()).item() for g, w in zip(got, want))
                    us = graph_us(impl, kw, nbytes, warps or None)
                    row = {"kernel": name, "batch": B, "num_warps": warps or "default", "us": us,
                           "bytes": nbytes, "pct_copy_bw": 100 * nbytes / (us * 1e-6) / bw, "rel_err": err,
                           "passed": err < 1e-2, "copy_bw_gbs": bw / 1e9, "commit": a.commit,
                           "gpu": torch.cuda.get_device_name()}
                    rows.append(row)
                    out.write(json.dumps(row) + "\n")
    print(f"copy bandwidth {bw / 1e9:.0f} GB/s")
    print("| kernel | B | warps | us | % copy bw | rel err |")
    for r in rows:
        print(f"| {r['kernel']} | {r['batch']} | {r['num_warps']} | {r['us']:.1f} | {r['pct_copy_bw']:.0f} | "
              f"{r['rel_err']:.1e} |")


if __name__ == "__main__":
    main()
