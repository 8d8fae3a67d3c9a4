"""Launch-configuration sweep of the Triton TTT decode kernels at ttt-1b shapes (fp16 state), one run.

For every (kernel, configuration) of a recipe: the float64 check first (2 mini-batches + 1 token at
--check-batch, enough items that every persistent program loops), then the per-call time over the 16
mini-batch positions (one CUDA graph, L2 rotated, as the micro-benchmark) at --batch, the time at each
position, and the compiled kernels' registers / spills / shared memory. Then the best configuration
of each kernel at the other --scan-batches. One JSON line per cell to $OUT/kernel_sweep.jsonl as it
goes (a killed run keeps what it measured); a table last.

    PYTHONPATH=src python3 exp/gpu/kernel_sweep.py --recipe round1 --out $OUT
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

from ttt_decode.bench.micro import (
    check_ttt_variant,
    copy_bandwidth,
    time_calls,
    ttt_micro_case,
)
from ttt_decode.ops.ttt_mlp import naive as m2_naive
from ttt_decode.provenance import git_commit, gpu_name

_R9 = {"BLOCK_F": 32, "num_warps": 1, "L2_HINTS": True, "REVERSE_B": True}
_R12 = {**_R9, "W2_IN_B": True, "W2_UPD_COLS": 32, "maxnreg": 168, "SPLIT_B": True}  # round 12's best
RECIPES = {
    # The dispatchers' own configurations (config None): the per-position times and compiled resources
    # of what the models run.
    "defaults": {k: [None] for k in ("mlp_2_dual_triton", "mlp_1_dual_triton", "mlp_2_primal_triton",
                                     "mlp_1_primal_triton")},
    # Rounds 1-3 (exp/NOTES.md, "H200 kernel sweeps") ran at commits 2315998, 88a0e99 and c71f6a2, whose
    # kernels had more designs (persistent programs) and knobs than remain; their records are under
    # exp/results/h200/kernel_sweep_round*.jsonl. Round 4: the L2 reuse of the second F walk. Round 5
    # (tensor-core matrix-vector products) ran at 3adb0fe, whose MMA flag was reverted after it.
    # Round 7 (M2 dual in Gluon, a chunk stream through a 2-slot cp.async ring) ran at 3734f49, reverted
    # after it (3.6x slower).
    "round4": {
        "mlp_2_dual_triton": [
            {"BLOCK_F": 64, "num_warps": 2},
            {"BLOCK_F": 64, "num_warps": 2, "L2_HINTS": True},
            {"BLOCK_F": 64, "num_warps": 2, "REVERSE_B": True},
            {"BLOCK_F": 64, "num_warps": 2, "L2_HINTS": True, "REVERSE_B": True},
            {"BLOCK_F": 32, "num_warps": 1},
            {"BLOCK_F": 32, "num_warps": 1, "L2_HINTS": True},
            {"BLOCK_F": 32, "num_warps": 1, "REVERSE_B": True},
            {"BLOCK_F": 32, "num_warps": 1, "L2_HINTS": True, "REVERSE_B": True},
        ],
        "mlp_2_primal_triton": [
            {"BLOCK_F": 64, "num_warps": 2},
            {"BLOCK_F": 64, "num_warps": 2, "L2_HINTS": True},
            {"BLOCK_F": 64, "num_warps": 2, "REVERSE_B": True},
            {"BLOCK_F": 64, "num_warps": 2, "L2_HINTS": True, "REVERSE_B": True},
            {"BLOCK_F": 32, "num_warps": 1, "L2_HINTS": True, "REVERSE_B": True},
        ],
    },
    # Round 6: M1 dual in Gluon (ops/ttt_linear/gluon_decode.py): persistent one-warp programs, the next
    # item's W1 and cache rows copied into shared memory (cp.async) while the current one is computed.
    "round6": {
        "mlp_1_dual_triton": [
            {"num_warps": 1, "UPDATE_DOT": True},
            {"GLUON": True, "programs_per_sm": 8, "rows": 16},
            {"GLUON": True, "programs_per_sm": 8, "rows": 32},
            {"GLUON": True, "programs_per_sm": 7, "rows": 32},
            {"GLUON": True, "programs_per_sm": 16, "rows": 32},
        ],
    },
    # Round 8: M1 primal in Gluon (ops/ttt_linear/gluon_primal.py), round 6's design with W1 and W1_grad
    # in each buffer set (2 x 16.5 KB a program: at most 6 programs a multiprocessor on sm_90).
    "round8": {
        "mlp_1_primal_triton": [
            {"num_warps": 2},
            {"GLUON": True, "programs_per_sm": 6, "rows": 16},
            {"GLUON": True, "programs_per_sm": 6, "rows": 8},
            {"GLUON": True, "programs_per_sm": 6, "rows": 32},
            {"GLUON": True, "programs_per_sm": 5, "rows": 16},
            {"GLUON": True, "programs_per_sm": 4, "rows": 16},
        ],
    },
    # Round 9: the end-of-mini-batch W2 update inside pass B (W2_IN_B) against the update pass, twice each,
    # interleaved (the per-position times say what the last position gains and the others pay).
    "round9": {
        "mlp_2_dual_triton": [
            {"BLOCK_F": 32, "num_warps": 1, "L2_HINTS": True, "REVERSE_B": True},
            {"BLOCK_F": 32, "num_warps": 1, "L2_HINTS": True, "REVERSE_B": True, "W2_IN_B": True},
            {"BLOCK_F": 32, "num_warps": 1, "L2_HINTS": True, "REVERSE_B": True},
            {"BLOCK_F": 32, "num_warps": 1, "L2_HINTS": True, "REVERSE_B": True, "W2_IN_B": True},
        ],
    },
    # Round 10: a register cap (maxnreg) for more resident one-warp programs. Offline for sm_90 the round-9
    # kernel spills inside pass B's loop under maxnreg 168 only because of the W2_IN_B branch's whole-chunk
    # tiles; with the chunk's update done in W2_UPD_COLS-column slices (the chunk read again, from L1) the
    # loops carry no spills at 168 registers (12 programs a multiprocessor instead of 8). Interleaved with the
    # round-9 default; 128 (16 programs) spills ~46 values a pass-B chunk, 192 gives 10 programs.
    "round10": {
        "mlp_2_dual_triton": [
            {**_R9, "W2_IN_B": True},
            {**_R9, "W2_IN_B": True, "W2_UPD_COLS": 32, "maxnreg": 168},
            {**_R9, "W2_IN_B": True, "W2_UPD_COLS": 16, "maxnreg": 168},
            {**_R9, "W2_IN_B": True, "W2_UPD_COLS": 32},
            {**_R9, "W2_IN_B": True, "W2_UPD_COLS": 32, "maxnreg": 128},
            {**_R9, "W2_IN_B": True, "W2_UPD_COLS": 32, "maxnreg": 192},
            {**_R9, "W2_IN_B": True},
            {**_R9, "W2_IN_B": True, "W2_UPD_COLS": 32, "maxnreg": 168},
        ],
    },
    # Round 11: round 10's W2 slices with the chunk's X2 rows from registers (no barrier, no reload of the cache
    # rows), and lower caps: offline, 152 / 144 / 136 registers (13 / 14 / 15 programs) spill 4 / 7 / 23 values
    # a pass-B chunk. "round11_small": the capped and uncapped kernels at the small batches (--batch 64 .. 256),
    # where fewer, longer waves may lose (round 10: 90.8 against 80.7 us at B = 64).
    "round11": {
        "mlp_2_dual_triton": [
            {**_R9, "W2_IN_B": True},
            {**_R9, "W2_IN_B": True, "W2_UPD_COLS": 32, "maxnreg": 168},
            {**_R9, "W2_IN_B": True, "W2_UPD_COLS": 16, "maxnreg": 168},
            {**_R9, "W2_IN_B": True, "W2_UPD_COLS": 32, "maxnreg": 152},
            {**_R9, "W2_IN_B": True, "W2_UPD_COLS": 32, "maxnreg": 144},
            {**_R9, "W2_IN_B": True, "W2_UPD_COLS": 32, "maxnreg": 136},
            {**_R9, "W2_IN_B": True},
            {**_R9, "W2_IN_B": True, "W2_UPD_COLS": 32, "maxnreg": 168},
        ],
    },
    "round11_small": {
        "mlp_2_dual_triton": [
            {**_R9, "W2_IN_B": True},
            {**_R9, "W2_IN_B": True, "W2_UPD_COLS": 32, "maxnreg": 168},
            {**_R9, "W2_IN_B": True, "W2_UPD_COLS": 32, "maxnreg": 144},
            {**_R9, "W2_IN_B": True, "W2_UPD_COLS": 32},
        ],
    },
    # Round 12: the last position's pass B as its own loop (SPLIT_B), so that the W2 update's tiles, and the
    # spills of the whole-chunk update from registers under the cap, stay out of the ordinary positions'
    # allocation (offline: the ordinary loop 577 instructions, no spills, with either update).
    "round12": {
        "mlp_2_dual_triton": [
            {**_R9, "W2_IN_B": True, "W2_UPD_COLS": 32, "maxnreg": 168},
            {**_R9, "W2_IN_B": True, "W2_UPD_COLS": 32, "maxnreg": 168, "SPLIT_B": True},
            {**_R9, "W2_IN_B": True, "maxnreg": 168, "SPLIT_B": True},
            {**_R9, "W2_IN_B": True, "W2_UPD_COLS": 16, "maxnreg": 168, "SPLIT_B": True},
            {**_R9, "W2_IN_B": True},
            {**_R9, "W2_IN_B": True, "W2_UPD_COLS": 32, "maxnreg": 168, "SPLIT_B": True},
        ],
    },
    "round12_small": {
        "mlp_2_dual_triton": [
            {**_R9, "W2_IN_B": True},
            {**_R9, "W2_IN_B": True, "W2_UPD_COLS": 32, "maxnreg": 168, "SPLIT_B": True},
            {**_R9, "W2_IN_B": True, "maxnreg": 168, "SPLIT_B": True},
        ],
    },
    # Round 13 (ran at 0cdc023, whose W1_IN_B flag was removed after it: 578 against 549 us): W1's end-of-mini-batch
    # update in the last position's pass B too, chunk by chunk from the chunk's G1 rows once its g1 is known, so
    # that the W1 read would overlap the chain instead of a serial update pass.
    "round13": {
        "mlp_2_dual_triton": [
            {**_R12},
            {**_R12, "W1_IN_B": True, "W1_UPD_ROWS": 32},
            {**_R12, "W1_IN_B": True, "W1_UPD_ROWS": 16},
            {**_R12},
            {**_R12, "W1_IN_B": True, "W1_UPD_ROWS": 32},
        ],
    },
    "round13_small": {
        "mlp_2_dual_triton": [{**_R9, "W2_IN_B": True}, {**_R12}, {**_R12, "W1_IN_B": True, "W1_UPD_ROWS": 32}],
    },
    # Round 14: ncu (session 11, call 5) shows the capped kernel's last position moving more DRAM bytes than the
    # round-9 one: the W2 slices' reread of a chunk that pass B loaded with evict-first. KEEP_W2_LAST drops the hint
    # at that position.
    "round14": {
        "mlp_2_dual_triton": [{**_R12}, {**_R12, "KEEP_W2_LAST": True}, {**_R12}, {**_R12, "KEEP_W2_LAST": True}],
    },
    # Round 15 (prepared in session 11, not yet run): with the split pass B, offline for sm_90 the ordinary loop
    # carries no spills at 152 or 144 registers either (13 / 14 programs a multiprocessor; round 11's lower caps
    # spilled there without the split), and 1 STL + 5 LDL a chunk at 128 (16 programs, one wave of 2048 items at
    # B = 64). Run at --batch 512 and at --batch 64 / 128.
    "round15": {
        "mlp_2_dual_triton": [{**_R12, "KEEP_W2_LAST": True, "maxnreg": r} for r in (168, 152, 144, 136, 128, 168)],
    },
    # Round 16 (session 12): the matrix-vector products on the tensor cores with the vector as the MMA's A
    # operand, split into fp16 hi / lo rows (TC_A: pass A; TC_B: the ordinary positions' pass B). Offline for
    # sm_90 pass A is ~540 SASS instructions a chunk instead of 654, and Triton pipelines its W tiles into
    # shared memory with cp.async (num_stages 3: 18.5 KB a program, 2: 10.4 KB).
    "round16": {
        "mlp_2_dual_triton": [
            {**_R12, "KEEP_W2_LAST": True},
            {**_R12, "KEEP_W2_LAST": True, "TC_A": True},
            {**_R12, "KEEP_W2_LAST": True, "TC_A": True, "num_stages": 2},
            {**_R12, "KEEP_W2_LAST": True, "TC_A": True, "TC_B": True},
            {**_R12, "KEEP_W2_LAST": True, "TC_A": True, "TC_B": True, "num_stages": 2},
            {**_R12, "KEEP_W2_LAST": True, "TC_A": True, "maxnreg": None},
            {**_R12, "KEEP_W2_LAST": True, "TC_A": True, "TC_B": True, "maxnreg": None},
            {**_R12, "KEEP_W2_LAST": True},
        ],
    },
    # Round 17: round 16's TC_A + TC_B uncapped (242 registers, 8 programs a multiprocessor) read 561 against
    # 601 us for the CUDA-core kernel at the same residency (round 9), but spilled under the 168 cap (634-643
    # us). Caps between: 208 / 192 / 184 registers (9 / 10 / 11 programs), num_stages 2 and 3; TC_B alone;
    # 16-column chunks (smaller MMA operand fragments).
    "round17": {
        "mlp_2_dual_triton": [{**_R12, "KEEP_W2_LAST": True}]
        + [{**_R12, "KEEP_W2_LAST": True, "TC_A": True, "TC_B": True, "maxnreg": r, "num_stages": st}
           for r, st in ((208, 3), (192, 3), (184, 3), (184, 2), (176, 2))]
        + [{**_R12, "KEEP_W2_LAST": True, "TC_B": True, "maxnreg": r} for r in (None, 192, 168)]
        + [{**_R12, "KEEP_W2_LAST": True, "TC_A": True, "TC_B": True, "BLOCK_F": 16, "W2_UPD_COLS": 32, "maxnreg": r}
           for r in (168, 192)]
        + [{**_R12, "KEEP_W2_LAST": True}],
    },
    # Round 18 (session 12, after the TC code was removed again): B = 64 (2048 items: two waves of the uncapped
    # 8 programs a multiprocessor), launch shapes only: 16-column chunks, 2 and 4 warps an item, one wave under a
    # 128-register cap.
    "round18_small": {
        "mlp_2_dual_triton": [
            {**_R9, "W2_IN_B": True},
            {**_R9, "W2_IN_B": True, "BLOCK_F": 16},
            {**_R9, "W2_IN_B": True, "num_warps": 2},
            {**_R9, "W2_IN_B": True, "BLOCK_F": 64, "num_warps": 2},
            {**_R9, "W2_IN_B": True, "BLOCK_F": 64, "num_warps": 4},
            {**_R12, "KEEP_W2_LAST": True, "maxnreg": 128},
            {**_R12, "KEEP_W2_LAST": True, "BLOCK_F": 16, "W2_UPD_COLS": 32, "maxnreg": 128},
            {**_R12, "KEEP_W2_LAST": True, "num_warps": 2, "maxnreg": 128},
            {**_R9, "W2_IN_B": True},
        ],
    },
    # Round 19 (session 13): L2 prefetch (`prefetch.global.L2`, tc.prefetch_l2) of the tiles a chunk ahead, which
    # holds no registers: ncu put 59% of the stall cycles at position 0 (75% at the last) on long scoreboard
    # (global loads), and 47% of pass B's W2 rereads missed L2. PREFETCH_A: pass A's W1 / W2 tiles that many
    # chunks ahead (chunks 0 .. n-1 before the prologue); PREFETCH_B: pass B's next W2 rows and cache rows.
    # Offline for sm_90: +18 instructions a pass-A chunk (655 -> 673), +25 an ordinary pass-B chunk (578 -> 603),
    # no spills in the loops at 168 or 152 registers.
    "round19": {
        "mlp_2_dual_triton": [{**_R12, "KEEP_W2_LAST": True, **pf} for pf in (
            {}, {"PREFETCH_A": 1}, {"PREFETCH_A": 2}, {"PREFETCH_B": 2}, {"PREFETCH_A": 1, "PREFETCH_B": 2},
            {"PREFETCH_A": 2, "PREFETCH_B": 2}, {"PREFETCH_A": 1, "PREFETCH_B": 2, "maxnreg": 152}, {})]
        + [{**_R9, "W2_IN_B": True, "PREFETCH_A": 1, "PREFETCH_B": 2}],
    },
    "round19_small": {
        "mlp_2_dual_triton": [{**_R9, "W2_IN_B": True, **pf} for pf in (
            {}, {"PREFETCH_A": 1}, {"PREFETCH_A": 1, "PREFETCH_B": 2}, {"PREFETCH_A": 2, "PREFETCH_B": 2})]
        + [{**_R12, "KEEP_W2_LAST": True, "PREFETCH_A": 1, "PREFETCH_B": 2}, {**_R9, "W2_IN_B": True}],
    },
    # Round 20: round 19's PREFETCH_B (536.0 against 544.7 / 544.9 us at B = 512) split into its cache rows (1) and
    # cache rows + W2 rows (2), each twice; PREFETCH_A 1 with it at the small batches (79.0 against 81.1 us at
    # B = 64, 150.8 against 157.2 at B = 128, uncapped) and the capped kernel at B = 128 (what dual_config picks).
    "round20": {
        "mlp_2_dual_triton": [{**_R12, "KEEP_W2_LAST": True, **pf} for pf in (
            {}, {"PREFETCH_B": 2}, {"PREFETCH_B": 1}, {}, {"PREFETCH_B": 2}, {"PREFETCH_B": 1})],
    },
    "round20_small": {
        "mlp_2_dual_triton": [{**_R9, "W2_IN_B": True, **pf} for pf in (
            {}, {"PREFETCH_A": 1, "PREFETCH_B": 2}, {"PREFETCH_B": 2}, {"PREFETCH_B": 1},
            {"PREFETCH_A": 1, "PREFETCH_B": 1}, {}, {"PREFETCH_A": 1, "PREFETCH_B": 2})]
        + [{**_R12, "KEEP_W2_LAST": True, **pf} for pf in ({}, {"PREFETCH_B": 2}, {"PREFETCH_B": 1})],
    },
    # Round 21: the last position's update pass reads W1 again from DRAM, slice by slice, after pass B and the
    # epilogue (last / ordinary 2.5 at round 20's default). UPD_PREFETCH 1: the next slice's W1 columns requested
    # into L2 in the update loop; 2: all of W1 after pass B; 3: all of W1 before pass B. Each twice, on round 20's
    # default (PREFETCH_B 2 capped, 1 below CAP_MIN_BATCH). Lost (532-539 against 531-532 us): code at 8ee7300 only.
    "round21": {
        "mlp_2_dual_triton": [{**_R12, "KEEP_W2_LAST": True, "PREFETCH_B": 2, "UPD_PREFETCH": u}
                              for u in (0, 1, 2, 3) * 2],
    },
    "round21_small": {
        "mlp_2_dual_triton": [{**_R9, "W2_IN_B": True, "PREFETCH_B": 1, "UPD_PREFETCH": u} for u in (0, 1, 2, 3, 0)],
    },
    "round16_small": {
        "mlp_2_dual_triton": [
            {**_R9, "W2_IN_B": True},
            {**_R9, "W2_IN_B": True, "TC_A": True},
            {**_R9, "W2_IN_B": True, "TC_A": True, "TC_B": True},
            {**_R12, "KEEP_W2_LAST": True, "TC_A": True},
            {**_R12, "KEEP_W2_LAST": True, "TC_A": True, "TC_B": True},
        ],
    },
    "round15_small": {
        "mlp_2_dual_triton": [{**_R9, "W2_IN_B": True}] + [{**_R12, "KEEP_W2_LAST": True, "maxnreg": r}
                                                             for r in (168, 144, 128)],
    },
}
KERNEL_FUNCS = {  # the Triton (and Gluon) functions whose compiled variants are reported, as module:function
    "mlp_2_dual_triton": ("ttt_decode.ops.ttt_mlp.triton_decode:_m2_dual_kernel",),
    "mlp_1_dual_triton": ("ttt_decode.ops.ttt_linear.triton_decode:_m1_dual_kernel",
                          "ttt_decode.ops.ttt_linear.gluon_decode:_m1_dual_gluon_kernel"),
    "mlp_2_primal_triton": ("ttt_decode.ops.ttt_mlp.triton_primal:_m2_primal_kernel",),
    "mlp_1_primal_triton": ("ttt_decode.ops.ttt_linear.triton_primal:_m1_primal_kernel",
                            "ttt_decode.ops.ttt_linear.gluon_primal:_m1_primal_gluon_kernel"),
}


def compiled_resources(kernel: str) -> list[dict]:
    """registers / spills / shared memory of every compiled variant of the kernel's Triton functions."""
    import importlib

    out = []
    for spec in KERNEL_FUNCS[kernel]:
        mod_name, name = spec.split(":")
        fn = getattr(importlib.import_module(mod_name), name)
        for cache in getattr(fn, "device_caches", {}).values():
            for ck in cache[0].values():
                try:
                    ck._init_handles()
                    consts = {k: v for k, v in ck.src.constants.items()} if hasattr(ck, "src") else {}
                    out.append({"fn": name, "regs": ck.n_regs, "spills": ck.n_spills, "shared": ck.metadata.shared,
                                "num_warps": ck.metadata.num_warps, "maxnreg": ck.metadata.maxnreg,
                                "constants": {str(k): str(v) for k, v in consts.items()}})
                except Exception as e:  # metadata layout differs between Triton versions: report, do not fail
                    out.append({"fn": name, "error": repr(e)[:200]})
    return out


def time_positions(fns: list, n_sets: int, b: int, device) -> list[float]:
    """us per call at each mini-batch position (all state sets at that position in one graph)."""
    return [round(time_calls([fns[s * b + p] for s in range(n_sets)], device, 10)["us"], 2) for p in range(b)]


def run_cell(kernel, cfg, batch, device, copy_gbs, positions: bool, model: str) -> dict:
    fns, nbytes, flops, n_sets = ttt_micro_case(kernel, batch, torch.float16, device, model, torch.float16,
                                                config=cfg)
    t = time_calls(fns, device, 10)
    rec = {"us_per_layer": round(t["us"], 2), "us_p10": round(t["p10"], 2), "us_p90": round(t["p90"], 2),
           "bytes": int(nbytes), "state_sets": n_sets, "gb_per_s": round(nbytes / t["us"] / 1e3, 1),
           "pct_copy_bw": round(100 * nbytes / t["us"] / 1e3 / copy_gbs, 1)}
    if positions:
        rec["us_by_position"] = time_positions(fns, n_sets, 16, device)
        ordinary = rec["us_by_position"][:-1]
        rec["last_over_ordinary_mean"] = round(rec["us_by_position"][-1] / statistics.mean(ordinary), 3)
    del fns
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rec


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", default="round4", choices=sorted(RECIPES))
    p.add_argument("--kernels", default=None, help="comma-separated subset of the recipe's kernels")
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--scan-batches", default="64,1024,2048", help="batches for the best configuration of each kernel")
    p.add_argument("--check-batch", type=int, default=64)
    p.add_argument("--out", default=os.environ.get("OUT", "/tmp/out"))
    p.add_argument("--commit", default=None)
    p.add_argument("--model", default="ttt-1b", help="whose layer shapes (ttt-tiny with --device cpu: a dry run)")
    p.add_argument("--device", default="cuda")
    a = p.parse_args()
    os.makedirs(a.out, exist_ok=True)
    device = torch.device(a.device)
    path = os.path.join(a.out, "kernel_sweep.jsonl")
    copy = copy_bandwidth(device)
    meta = {"kind": "kernel_sweep", "commit": a.commit or git_commit(), "gpu": gpu_name(device),
            "torch": torch.__version__, "triton": __import__("triton").__version__, "model": a.model,
            "state_dtype": "float16", "dtype": "float16", "copy_gb_per_s": round(copy["gb_per_s"], 1),
            # M2 dual's cache convention (ttt_mlp.naive.DEFER_W1, env TTT_DECODE_M2_DEFER_W1): part of what ran
            "m2_defer_w1": m2_naive.DEFER_W1, "command": " ".join(sys.argv)}
    print(f"copy bandwidth {copy['gb_per_s']:.0f} GB/s {copy['ways']}", flush=True)
    recipe = RECIPES[a.recipe]
    kernels = a.kernels.split(",") if a.kernels else list(recipe)
    best = {}
    rows = []

    def emit(rec):
        with open(path, "a") as fh:
            fh.write(json.dumps(rec) + "\n")
        rows.append(rec)

    for kernel in kernels:
        for i, cfg in enumerate(recipe[kernel]):
            base = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), **meta, "kernel": kernel, "config_index": i,
                    "config": cfg}
            try:
                chk = check_ttt_variant(kernel, torch.float16, device, a.model, torch.float16, batch=a.check_batch,
                                        config=cfg)
                if not chk["passed"]:
                    emit({**base, "status": "check_failed", "check": chk})
                    print(f"{kernel} #{i} CHECK FAILED {chk['errors']}", flush=True)
                    continue
                rec = {**base, "status": "ok", "batch": a.batch, "check": chk,
                       **run_cell(kernel, cfg, a.batch, device, copy["gb_per_s"], positions=True, model=a.model)}
            except Exception as e:  # an out-of-resources configuration must not end the sweep
                emit({**base, "status": "error", "error": repr(e)[:400]})
                print(f"{kernel} #{i} ERROR {repr(e)[:200]}", flush=True)
                continue
            rec["resources"] = compiled_resources(kernel)
            emit(rec)
            print(f"{kernel} #{i} B={a.batch} {rec['us_per_layer']:.1f} us {rec['pct_copy_bw']:.1f}% "
                  f"last/ordinary {rec['last_over_ordinary_mean']} {cfg}", flush=True)
            if kernel not in best or rec["us_per_layer"] < best[kernel][1]["us_per_layer"]:
                best[kernel] = (cfg, rec)

    for kernel, (cfg, _) in best.items():
        for batch in [int(x) for x in a.scan_batches.split(",") if x]:
            base = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), **meta, "kernel": kernel, "config": cfg,
                    "best_at": a.batch}
            try:
                rec = {**base, "status": "ok", "batch": batch,
                       **run_cell(kernel, cfg, batch, device, copy["gb_per_s"], positions=False, model=a.model)}
            except Exception as e:
                rec = {**base, "status": "error", "batch": batch, "error": repr(e)[:400]}
            emit(rec)
            print(f"{kernel} best B={batch} {rec.get('us_per_layer')} us {rec.get('pct_copy_bw')}%", flush=True)
    with open(os.path.join(a.out, "best_configs.json"), "w") as fh:
        json.dump({k: v[0] for k, v in best.items()}, fh, indent=1)

    print(f"\n{'kernel':22s} {'cfg':>3s} {'B':>5s} {'us':>9s} {'%copy':>6s} {'last/ord':>8s}  config")
    for r in rows:
        if r["status"] == "ok":
            print(f"{r['kernel']:22s} {r.get('config_index', '-')!s:>3s} {r['batch']:5d} {r['us_per_layer']:9.1f} "
                  f"{r['pct_copy_bw']:6.1f} {r.get('last_over_ordinary_mean', ''):>8}  {json.dumps(r['config'])}")
        else:
            print(f"{r['kernel']:22s} {r.get('config_index', '-')!s:>3s} {r['status']}")


if __name__ == "__main__":
    main()
