"""M2 dual kernel at B=512, ttt-1b, fp16 state: launch configurations run A did not reach (1-warp programs,
32- and 128-column chunks with 2 warps), and the cost of each mini-batch position alone (the update
at the last position). Each configuration is checked against float64 first. JSON lines to --out.

    PYTHONPATH=src python3 exp/gpu/m2_dual_extra.py --out $OUT/m2_dual_extra.jsonl
"""

import argparse
import json
import time

import torch

from ttt_decode.bench.micro import (
    check_ttt_variant,
    copy_bandwidth,
    time_calls,
    ttt_micro_case,
)
from ttt_decode.ops.ttt_mlp.triton_decode import dual_config
from ttt_decode.provenance import git_commit

K = "mlp_2_dual_triton"


def cfg(bf, w, dot=True):
    return {"BLOCK_F": bf, "num_warps": w, "maxnreg": None, "EARLY": False, "RELOAD_W2": True, "UPDATE_DOT": dot}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--configs", default=None, help="JSON list of configurations (default: run B's list)")
    p.add_argument("--batches", default="", help="comma list: also time the fastest configuration at these batches")
    args = p.parse_args()
    dev = torch.device("cuda")
    copy = copy_bandwidth(dev)["gb_per_s"]
    default = dual_config(args.batch, 64, torch.float16)
    rows = []

    def emit(rec):
        rec = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "commit": git_commit(), "gpu": torch.cuda.get_device_name(),
               "kernel": K, "model": "ttt-1b", "state_dtype": "float16", "batch": args.batch,
               "copy_gb_per_s": round(copy, 1), **rec}
        with open(args.out, "a") as fh:
            fh.write(json.dumps(rec) + "\n")
        rows.append(rec)

    configs = json.loads(args.configs) if args.configs else [default, cfg(64, 1), cfg(32, 1), cfg(32, 2), cfg(128, 2),
                                                              cfg(64, 2, dot=False)]
    configs = [{**default, **c} for c in configs]
    timed = []
    for c in configs:
        chk = check_ttt_variant(K, torch.float16, dev, "ttt-1b", torch.float16, batch=3, config=c)
        if not chk["passed"]:
            emit({"stage": "configs", "config": c, "status": "check_failed", "check": chk})
            continue
        fns, nbytes, _, n_sets = ttt_micro_case(K, args.batch, torch.float16, dev, "ttt-1b", config=c)
        t = time_calls(fns, dev, 20)
        gbs = nbytes / t["us"] / 1e3
        emit({"stage": "configs", "config": c, "us_per_layer": round(t["us"], 1), "gb_per_s": round(gbs, 1),
              "pct_copy_bw": round(100 * gbs / copy, 1), "check": chk})
        timed.append((t["us"], c))
        if c is configs[0] or c == default:
            for pos in (0, 7, 15):  # one position alone, every state set
                tp = time_calls(fns[pos::16], dev, 20)
                emit({"stage": "position", "config": c, "pos": pos, "us_per_layer": round(tp["us"], 1)})
        del fns
        torch.cuda.empty_cache()
    best = min(timed, key=lambda x: x[0])[1] if timed else None
    for b in [int(x) for x in args.batches.split(",") if x]:
        fns, nbytes, _, n_sets = ttt_micro_case(K, b, torch.float16, dev, "ttt-1b", config=best)
        t = time_calls(fns, dev, 20)
        gbs = nbytes / t["us"] / 1e3
        emit({"stage": "batch", "config": best, "batch": b, "us_per_layer": round(t["us"], 2), "bytes": nbytes,
              "gb_per_s": round(gbs, 1), "pct_copy_bw": round(100 * gbs / copy, 1), "state_sets": n_sets})
        del fns
        torch.cuda.empty_cache()
    for r in rows:
        what = f"pos {r['pos']}" if "pos" in r else f"B={r['batch']}" if r["stage"] == "batch" else str({k: v for k, v in r["config"].items() if v not in (None,)})
        print(f"{r['stage']:9s} {what:95s} {r.get('us_per_layer', '-'):>8} us {r.get('pct_copy_bw', ''):>6}%")


if __name__ == "__main__":
    main()
