"""Triton dual-form decode step of TTT-MLP (M2), DESIGN section 4; the reference is naive.decode_step_dual.

Per (sequence, head) item, f head dim, F = 4f hidden, b mini-batch, i = pos (read from the device):
    Z1k = k W1 + b1, X2k = gelu(Z1k), g2 = d/dZ2 1/2 ||LN(X2k W2 + b2) - (v - k)||^2,
    g1 = (g2 W2^T) * gelu'(Z1k);  cache row i <- (k, eta g1, X2k, eta g2)
    Z1' = q W1 + b1 - c_i sum_{s<=i} (q . k_s + 1) G1_s,  X2' = gelu(Z1')
    Z   = X2' W2 + b2 - c_i sum_{s<=i} (X2' . X2_s + 1) G2_s,  out = q + LN(Z)
and at i = b-1, in the same launch: W1 -= c_{b-1} K^T G1, b1 -= c_{b-1} sum_s G1_s, W2 -= c_{b-1} X2^T G2,
b2 -= c_{b-1} sum_s G2_s (G = eta * g, the cache rows as stored, i.e. rounded to the cache dtype,
exactly as the reference reads them back).
DEFER_W1 (naive.DEFER_W1, TTT_DECODE_M2_DEFER_W1=1, off by default; DESIGN section 9.8): W1 in memory is the
inner model's plus
c_{b-1} k_c^T G1_c, the pending term held in cache row b-1, so that Z1 of k and q subtract c_{b-1} (x . k_c)
G1_c (tiles.less_pending, in pass A), and at i = b-1 pass A updates each W1 chunk as it loads it with the rows
as stored before this token's (`_pass_a_last`): W1 is read once at every position, and the end-of-mini-batch
pass does only the biases (and W2 without W2_IN_B). Offline for sm_90 (exp/gpu/offline_sass.py, capped
configuration) the last position's pass A is 923 SASS instructions a chunk against 655 for pass A + 529 for
the W1 update pass before, no spills in the loops; the ordinary pass A 542 against 655 (the pending row's
load gives Z1 a one-element-a-lane layout, so gelu is no longer computed 8 times over in a replicated one).
Measured on an H100 (exp/results/h100/kernel_positions_m2_defer*_h100_9e7fd45.jsonl, both orders): B = 512 mean
699 against 689 us, last position 1454 against 1646 us (last / ordinary 2.22 against 2.61), but positions 0 / 7
/ 14 580 / 655 / 722 against 549 / 628 / 707 us; B = 64 / 1024 / 2048 1.4% slower; whole step at B = 512
18.77 against 18.01 ms. So it is off by default. The SASS of that build shows why (seventeenth session): the pending
row was loaded where it was used, after the W1 products, and ptxas issued pass A's W2 loads after the products too
(the current-state kernel issues them among the products), so each chunk waited on W2; the row is now loaded with
the chunk's W1 tiles (tiles.load_pending), which puts the W2 loads back (not yet timed).

Compulsory bytes per call (s = state/cache item size, a = activation item size), per item:
    state read once  (2 f F + F + f) s;  cache rows of earlier tokens read  i (2 f + 2 F) s;
    this token's row written  (2 f + 2 F) s;  at i = b-1 the state written  (2 f F + F + f) s;
    q, k, v read and out written 4 f a, eta 4 bytes.
  Averaged over the b positions: ops.ttt_common.inner_step_cost(mlp=True, form="dual").
  ttt-1b (H 32, f 64, b 16), fp16 state: 81.7 KB per item and call; B = 512 (16384 items): 1.34 GB,
  floor 313 us at 4271 GB/s. The last position moves 2.0x the mean of the others (it writes W).
FLOPs per item: 10 f F (k W1, q W1, X2k W2, g2 W2^T, X2' W2) + 4 (i+1)(f + F) (cache terms) + at i = b-1
  4 b f F (the rank-b update); ~0.17 MFLOP, ~2 FLOP per state byte: bound by memory traffic.
Grid: (B H,), one program per item, 1 warp at f = 64 (docs/DESIGN.md section 11.6 says why: within
  an item the chain Z1 -> Z2 -> g2 -> g1 -> Z1' -> Z2 is serial, so few warps per item and many items
  resident per multiprocessor win; cross-warp reductions cost more than they parallelise).
  F is walked in BLOCK_F chunks twice (Z2k needs the full sum over F before g2 exists): pass A reads
  W1 and W2 and keeps k W1 + b1, q W1 + b1 in a float32 scratch (2 F floats per item); pass B reads W2
  again and the scratch. W2's second read must come from L2: with ~1000 items resident their W2 tiles
  (32 KB each) are about the L2's size, so pass A asks L2 to keep W2 (evict last) and W1 to go first,
  and pass B walks the chunks in reverse (the most recently read first). Each chunk's tiles are loaded
  when the chunk is reached: the other resident programs hide the latency, and registers for a second
  chunk in flight would cost residency (H200 sweeps, exp/NOTES.md).
  End of the mini-batch (W2_IN_B, the default): W2's rank-b update is done in pass B on the W2 chunk
  already in registers, so only W1 and the biases are read again in the update pass. H200, B = 512
  (kernel_sweep_round9_h200_df86e81.jsonl): last position 1367 -> 1250 us, ordinary 572 -> 562 us
  (4 fewer registers, half the shared memory: the W2 update tile's staging is gone).
  Register cap (from B = 128, f = 64, fp16/bf16 state; `dual_config`): 168 registers a thread instead of 251
  puts 12 one-warp programs on a multiprocessor instead of 8 (ncu: achieved occupancy 12.2% -> 18.1%, DRAM
  throughput 48% -> 63% of peak at position 0). It fits without spills in the loops because the W2 update
  is then done in column slices (W2_UPD_COLS) and the last position runs its own copy of pass B (SPLIT_B).
  H200, B = 512: 601 -> 544 us (kernel_sweep_round1[0-4]_h200_*.jsonl).
  L2 prefetch (PREFETCH_B, tc.prefetch_l2: `prefetch.global.L2`, no register receives the data): in pass B
  the next chunk's cache rows (g1, X2 of the earlier tokens: DRAM reads that nothing else requests early),
  and in the capped configuration its W2 rows too, are requested before the current chunk's loads. H200
  (kernel_sweep_round20{,_small}_h200_805966d.jsonl): 534.2 -> 522.5 us at B = 512, 146.2 -> 144.9 at 128,
  80.4 -> 77.7 at 64 (cache rows only there). Pass A's tiles requested a chunk ahead (PREFETCH_A) lost:
  552.6 / 603.0 us at 1 / 2 chunks against 544.9 (round 19): ncu shows DRAM traffic up, L2 hits for pass B's
  W2 down (the prefetched W1 lines take L2 that W2 needs).
Mutates: cache.k, cache.g1, cache.x2, cache.g2 (row pos), and at pos = b-1 state W1, b1, W2, b2 (with DEFER_W1
  row b-1 of k and g1 is the pending W1 term from then on).
  pos is read, never moved: with advance=True the wrapper moves it after the kernel (one tiny op).
Arithmetic in float32 on the CUDA cores. No autotuning (state updated in place): the configuration is
hand-picked (`dual_config`) from the H200 sweep recorded in exp/NOTES.md and exp/results/h200/.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ttt_decode.ops import ttt_triton_common as tc
from ttt_decode.ops.kernel_op import interpreting, step_op
from ttt_decode.ops.ttt_block_triton import gate_norm_rows
from ttt_decode.ops.ttt_common import TTT_NORM_EPS, DualCache, GateNorm, TTTState
from ttt_decode.ops.ttt_mlp import naive
from ttt_decode.ops.ttt_mlp import triton_tiles as tiles


@triton.jit
def _chunk_b(b_w2, x2k, dx2k, z1q0, g2, eta, c_i, a1, pos, b_g1, b_x2, p_cg1, p_cx2, o_f, m_f, o_s,
             FH: tl.constexpr, CACHE_DT: tl.constexpr):
    """Chunked kernel, with g2 known: this chunk's g1 and X2k cache rows (written), Z1', X2' and its
    W2 / X2_s products. b_g1, b_x2 [BMB, BF]: the earlier rows of the chunk (0 at s >= pos); a1 [BMB]:
    q . k_s + 1 for s <= pos, 0 elsewhere. Returns (X2' W2 partial [BD], X2' . X2_s partial [BMB], the
    chunk's X2 rows with this token's [BMB, BF])."""
    b_w2f = b_w2.to(tl.float32)  # [BF, BD]
    g1t = tc.rne(tl.sum(b_w2f * g2[None, :], 1) * dx2k * eta, CACHE_DT)
    x2k_r = tc.rne(x2k, CACHE_DT)
    tl.store(p_cg1 + pos * FH + o_f, g1t, mask=m_f)
    tl.store(p_cx2 + pos * FH + o_f, x2k_r, mask=m_f)
    cur = (o_s == pos)[:, None]
    b_g1 = tl.where(cur, g1t.to(tl.float32)[None, :], b_g1.to(tl.float32))
    x2q = tc.gelu(z1q0 - tl.sum(a1[:, None] * b_g1, 0) * c_i)  # [BF]
    b_x2 = tl.where(cur, x2k_r.to(tl.float32)[None, :], b_x2.to(tl.float32))
    return tl.sum(x2q[:, None] * b_w2f, 0), tl.sum(b_x2 * x2q[None, :], 1), b_x2


@triton.jit
def _load_rows(p_rows, o_s, m_old, o_c, m_c, stride):
    """Cache rows s < pos, columns o_c: [BMB, BC] (rows at or after pos read as 0, never touched)."""
    return tl.load(p_rows + o_s[:, None] * stride + o_c[None, :], mask=m_old[:, None] & m_c[None, :], other=0.0)


@triton.jit
def _pass_b(p_w2, p_cg1, p_cx2, p_cg2, p_z1, o_d, m_d, o_s, o_f0, m_old, m_cur, g2, g2t, eta, c_i, a1, pos,
            FH: tl.constexpr, D: tl.constexpr, MB: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_F: tl.constexpr,
            BLOCK_MB: tl.constexpr, NUM_CHUNKS: tl.constexpr, REVERSE_B: tl.constexpr, EV_ONCE: tl.constexpr,
            CACHE_DT: tl.constexpr, UPDATE_W2, W2_UPD_COLS: tl.constexpr, PREFETCH_B: tl.constexpr = 0):
    """Pass B over F: g1, Z1', X2' and the X2' products, chunk by chunk (pass A's Z1 from the scratch);
    -> (X2' W2 [BD], X2' . X2_s [BMB]). UPDATE_W2 (a constant, or pos == b-1 at run time): each chunk's W2 rows
    updated here too (the old W2 is used above and nowhere after), which saves the update pass's second
    read of W2 from DRAM; W2_UPD_COLS 0: from the registers that hold the chunk, against the g2 rows
    loaded in the branch, else from the chunk read again (from L1) in W2_UPD_COLS-column slices, whose
    tiles fit a register cap (maxnreg) under which the whole-chunk update spills. PREFETCH_B 1: the next
    chunk's cache rows (g1, X2 of the earlier tokens) are requested into L2 (tc.prefetch_l2) before this
    chunk's loads; 2: its W2 rows too."""
    z2q = tl.zeros([BLOCK_D], dtype=tl.float32)
    dots = tl.zeros([BLOCK_MB], dtype=tl.float32)
    for cj in range(NUM_CHUNKS):
        # REVERSE_B: the chunks pass A read last come first, while they are most likely still in L2.
        ci = NUM_CHUNKS - 1 - cj if REVERSE_B else cj
        o_f = ci * BLOCK_F + o_f0
        m_f = o_f < FH
        if PREFETCH_B > 0:
            cn = ci - 1 if REVERSE_B else ci + 1
            ok = (cn >= 0) & (cn < NUM_CHUNKS)
            tc.prefetch_rows_l2(p_cg1, o_s, m_old & ok, cn * BLOCK_F, FH, BLOCK_F, BLOCK_F)
            tc.prefetch_rows_l2(p_cx2, o_s, m_old & ok, cn * BLOCK_F, FH, BLOCK_F, BLOCK_F)
            if PREFETCH_B > 1:
                o_n = cn * BLOCK_F + o_f0
                tc.prefetch_rows_l2(p_w2, o_n, (o_n < FH) & ok, 0, D, D, BLOCK_D)
        c_w2 = tiles.load_w2(p_w2, o_d, m_d, o_f, m_f, D, EV_ONCE)
        c_g1 = _load_rows(p_cg1, o_s, m_old, o_f, m_f, FH)
        c_x2 = _load_rows(p_cx2, o_s, m_old, o_f, m_f, FH)
        z1k = tl.load(p_z1 + o_f, mask=m_f, other=0.0)
        z1q0 = tl.load(p_z1 + FH + o_f, mask=m_f, other=0.0)
        x2k, dx2k = tc.gelu_and_grad(z1k)
        zc, dc, x2_rows = _chunk_b(c_w2, x2k, dx2k, z1q0, g2, eta, c_i, a1, pos, c_g1, c_x2, p_cg1, p_cx2, o_f,
                                   m_f, o_s, FH, CACHE_DT)
        z2q += zc
        dots += dc
        if UPDATE_W2:
            if W2_UPD_COLS == 0:
                g2_rows = _load_rows(p_cg2, o_s, m_old, o_d, m_d, D)
                g2_rows = tl.where(m_cur[:, None], g2t[None, :], g2_rows)
                if CACHE_DT == tl.float16:
                    upd = tl.dot(tl.trans(x2_rows.to(tl.float16)), g2_rows.to(tl.float16))  # exact products
                else:
                    upd = tl.dot(tl.trans(x2_rows), g2_rows.to(tl.float32), input_precision="tf32x3")
                w2_new = c_w2.to(tl.float32) - upd * c_i
                tl.store(p_w2 + o_f[:, None] * D + o_d[None, :], tc.rne(w2_new, p_w2.dtype.element_ty),
                         mask=m_f[:, None] & m_d[None, :])
            else:
                # The chunk read again (from L1, or L2: it was loaded just above) in W2_UPD_COLS-column
                # slices, against the g2 rows of those columns (all b rows: this token's was stored before
                # the pre-pass-B barrier), so that the branch's tiles fit a register cap (maxnreg) under
                # which the whole-chunk update above spills.
                if CACHE_DT == tl.float16:
                    x2_t = tl.trans(x2_rows.to(tl.float16))
                else:
                    x2_t = tl.trans(x2_rows)
                o_c0 = tl.arange(0, W2_UPD_COLS)
                for cc in range(BLOCK_D // W2_UPD_COLS):
                    o_c = cc * W2_UPD_COLS + o_c0
                    m_c = o_c < D
                    g2_s = _load_rows(p_cg2, o_s, o_s < MB, o_c, m_c, D)
                    if CACHE_DT == tl.float16:
                        upd = tl.dot(x2_t, g2_s)  # exact fp16 products
                    else:
                        upd = tl.dot(x2_t, g2_s.to(tl.float32), input_precision="tf32x3")
                    p_ws = p_w2 + o_f[:, None] * D + o_c[None, :]
                    m_ws = m_f[:, None] & m_c[None, :]
                    w2_s = tl.load(p_ws, mask=m_ws, other=0.0).to(tl.float32) - upd * c_i
                    tl.store(p_ws, tc.rne(w2_s, p_w2.dtype.element_ty), mask=m_ws)

    return z2q, dots


@triton.jit
def _pass_a_last(p_w1, p_b1, p_w2, p_z1, p_ck, p_cg1, b_b2, b_k, b_q, o_d, m_d, o_f0, o_s, c_i, pend_k, pend_q,
                 FH: tl.constexpr, D: tl.constexpr, MB: tl.constexpr, BLOCK_F: tl.constexpr,
                 NUM_CHUNKS: tl.constexpr, CACHE_DT: tl.constexpr, EVICT_W1: tl.constexpr,
                 EVICT_W2: tl.constexpr):
    """Pass A of the last position with DEFER_W1: tiles.z2k_chunked's Z2k and Z1 scratch (Z1 less the pending
    term, as its PENDING), and each W1 chunk, as loaded for its products, updated with the cache rows as
    stored before this token's (the mini-batch's rows < b-1 and the pending row b-1):
    W1[:, chunk] -= c_{b-1} K^T G1[:, chunk], one MMA a chunk (fp16 rows: exact products, float32
    accumulation), stored back. So W1 is read once at every position; this token's rank-1 term is the next
    pending row (naive.py, DEFER_W1)."""
    m_all = o_s < MB
    # K^T [BD, BMB]: every row as stored (this token's k row is stored after this pass).
    b_kt = tl.trans(tl.load(p_ck + o_s[:, None] * D + o_d[None, :], mask=m_all[:, None] & m_d[None, :], other=0.0))
    z2k = b_b2
    for ci in range(NUM_CHUNKS):
        o_f = ci * BLOCK_F + o_f0
        m_f = o_f < FH
        c_w1 = tiles.load_w1(p_w1, o_d, m_d, o_f, m_f, FH, EVICT_W1)
        c_w2 = tiles.load_w2(p_w2, o_d, m_d, o_f, m_f, D, EVICT_W2)
        b_g = tl.load(p_cg1 + o_s[:, None] * FH + o_f[None, :], mask=m_all[:, None] & m_f[None, :], other=0.0)
        g_c = tiles.load_pending(p_cg1 + (MB - 1) * FH, o_f, m_f)
        z1k, z1q0 = tiles.w1_products(c_w1, p_b1, o_f, m_f, b_k, b_q)
        z1k, z1q0 = tiles.less_pending(z1k, z1q0, g_c, pend_k, pend_q)
        tl.store(p_z1 + o_f, z1k, mask=m_f)
        tl.store(p_z1 + FH + o_f, z1q0, mask=m_f)
        z2k += tl.sum(tc.gelu(z1k)[:, None] * c_w2.to(tl.float32), 0)
        if CACHE_DT == tl.float16:
            upd = tl.dot(b_kt, b_g)  # exact fp16 products
        else:
            upd = tl.dot(b_kt.to(tl.float32), b_g.to(tl.float32), input_precision="tf32x3")
        w1_new = tc.rne(c_w1.to(tl.float32) - upd * c_i, p_w1.dtype.element_ty)
        tl.store(p_w1 + o_d[:, None] * FH + o_f[None, :], w1_new, mask=m_d[:, None] & m_f[None, :])
    return z2k


@triton.jit
def _m2_dual_kernel(
    q_ptr, k_ptr, v_ptr, eta_ptr, c_ptr, gamma_ptr, beta_ptr, pos_ptr,
    w1_ptr, b1_ptr, w2_ptr, b2_ptr, ck_ptr, cg1_ptr, cx2_ptr, cg2_ptr, out_ptr, z1_ptr,
    H, stride_qb, stride_qh, stride_kb, stride_kh, stride_vb, stride_vh, stride_eb, stride_eh,
    # FUSED_QK: q, k, eta, c from qk_prep's inputs (tc.ring_token_inputs); q_ptr .. c_ptr are then unused
    p_ptr, ring_ptr, cpos_ptr, wq_ptr, bq_ptr, wk_ptr, bk_ptr, cos_ptr, sin_ptr, rpos_ptr, lrb_ptr, tok_ptr,
    stride_p, lr_col, eta_scale, dim,
    # GATE_NORM: ops.ttt_block.gate_norm of each finished row into y (tc.finish_row, tc.gn_kernel_args)
    y_ptr, nw_ptr, nb_ptr, cnt_ptr, g_col, gn_eps,
    D: tl.constexpr, FH: tl.constexpr, MB: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_F: tl.constexpr, BLOCK_MB: tl.constexpr, EPS: tl.constexpr,
    L2_HINTS: tl.constexpr, REVERSE_B: tl.constexpr, W2_IN_B: tl.constexpr, W2_UPD_COLS: tl.constexpr,
    SPLIT_B: tl.constexpr, KEEP_W2_LAST: tl.constexpr, PREFETCH_A: tl.constexpr, PREFETCH_B: tl.constexpr,
    FUSED_QK: tl.constexpr, HAS_QK_BIAS: tl.constexpr, WIDTH: tl.constexpr, DEFER_W1: tl.constexpr,
    GATE_NORM: tl.constexpr, HAS_GATE: tl.constexpr, BLOCK_ROW: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    i_b = pid // H
    i_h = pid % H
    CACHE_DT: tl.constexpr = ck_ptr.dtype.element_ty
    NUM_CHUNKS: tl.constexpr = (FH + BLOCK_F - 1) // BLOCK_F
    o_d = tl.arange(0, BLOCK_D)
    m_d = o_d < D
    o_s = tl.arange(0, BLOCK_MB)
    o_f0 = tl.arange(0, BLOCK_F)
    pos = tl.load(pos_ptr).to(tl.int32)
    m_old = o_s < pos
    m_cur = o_s == pos
    m_rows = m_old | m_cur

    p_w1 = w1_ptr + pid * (D * FH)
    p_b1 = b1_ptr + pid * FH
    p_w2 = w2_ptr + pid * (FH * D)
    p_b2 = b2_ptr + pid * D
    p_ck = ck_ptr + pid * (MB * D)
    p_cg1 = cg1_ptr + pid * (MB * FH)
    p_cx2 = cx2_ptr + pid * (MB * FH)
    p_cg2 = cg2_ptr + pid * (MB * D)
    p_z1 = z1_ptr + pid * (2 * FH)  # k W1 + b1 and q W1 + b1 of pass A, float32

    # L2 prefetch (PREFETCH_A / PREFETCH_B): the first tiles each pass reads are requested before the
    # prologue, whose own loads then overlap them.
    for cp in tl.static_range(PREFETCH_A):
        tiles.prefetch_chunk(p_w1, p_w2, o_d, m_d, o_f0, cp, FH, D, BLOCK_F, NUM_CHUNKS)
    if PREFETCH_B > 0:
        C0: tl.constexpr = NUM_CHUNKS - 1 if REVERSE_B else 0
        tc.prefetch_rows_l2(p_cg1, o_s, m_old, C0 * BLOCK_F, FH, BLOCK_F, BLOCK_F)
        tc.prefetch_rows_l2(p_cx2, o_s, m_old, C0 * BLOCK_F, FH, BLOCK_F, BLOCK_F)

    if FUSED_QK:
        b_q, b_k, b_v, eta, c_i, gam, bet = tc.ring_token_inputs(
            p_ptr, ring_ptr, cpos_ptr, wq_ptr, bq_ptr, wk_ptr, bk_ptr, cos_ptr, sin_ptr, rpos_ptr, lrb_ptr, tok_ptr,
            v_ptr, gamma_ptr, beta_ptr, pos, i_b, i_h, o_d, m_d, stride_p, stride_vb, stride_vh, lr_col, eta_scale,
            dim, D, BLOCK_D, HAS_QK_BIAS, WIDTH)
    else:
        b_q, b_k, b_v, eta, c_i, gam, bet = tc.load_token_inputs(
            q_ptr, k_ptr, v_ptr, eta_ptr, c_ptr, gamma_ptr, beta_ptr, pos, i_b, i_h, o_d, m_d,
            stride_qb, stride_qh, stride_kb, stride_kh, stride_vb, stride_vh, stride_eb, stride_eh, D)  # [BD] each
    b_b2 = tl.load(p_b2 + o_d, mask=m_d, other=0.0).to(tl.float32)
    b_kc = _load_rows(p_ck, o_s, m_old, o_d, m_d, D)  # [BMB, BD]

    # Weights of the rows s <= pos in Z1': q . k_s + 1 (this token's row as stored).
    k_r = tc.rne(b_k, CACHE_DT)
    if not DEFER_W1:
        tl.store(p_ck + pos * D + o_d, k_r, mask=m_d)
    b_kc = tl.where(m_cur[:, None], k_r.to(tl.float32)[None, :], b_kc.to(tl.float32))
    a1 = tl.where(m_rows, tl.sum(b_kc * b_q[None, :], 1) + 1.0, 0.0)  # [BMB]

    # Pass A: Z2k = tc.gelu(k W1 + b1) W2 + b2 needs every column of W1 before g2 exists.
    # L2_HINTS: W1 is read once (evict first), W2 again in pass B (evict last there, first after).
    EV_ONCE: tl.constexpr = "evict_first" if L2_HINTS else ""
    EV_AGAIN: tl.constexpr = "evict_last" if L2_HINTS else ""
    if DEFER_W1:
        # W1 in memory is the inner model's plus c_{b-1} k_c^T G1_c (the pending row b-1, naive.py): Z1 of k
        # and q less c_{b-1} (x . k_c) G1_c, taken off pass A's products chunk by chunk.
        if FUSED_QK:
            c_last = tc.token_coeff(tok_ptr, tl.full((), MB - 1, tl.int32))
        else:
            c_last = tl.load(c_ptr + MB - 1).to(tl.float32)
        k_c = tl.load(p_ck + (MB - 1) * D + o_d, mask=m_d, other=0.0).to(tl.float32)
        pend_k = tl.sum(b_k * k_c, 0) * c_last
        pend_q = tl.sum(b_q * k_c, 0) * c_last
        if pos == MB - 1:
            z2k = _pass_a_last(p_w1, p_b1, p_w2, p_z1, p_ck, p_cg1, b_b2, b_k, b_q, o_d, m_d, o_f0, o_s, c_i, pend_k,
                               pend_q, FH, D, MB, BLOCK_F, NUM_CHUNKS, CACHE_DT, EV_ONCE, EV_AGAIN)
        else:
            z2k = tiles.z2k_chunked(p_w1, p_b1, p_w2, p_z1, b_b2, b_k, b_q, o_d, m_d, o_f0, FH, D, BLOCK_F,
                                    NUM_CHUNKS, True, EV_ONCE, EV_AGAIN, PREFETCH_A, p_cg1 + (MB - 1) * FH, pend_k,
                                    pend_q, True)
        # This token's k row, after every read of the rows as stored (a barrier: other threads read them).
        tl.debug_barrier()
        tl.store(p_ck + pos * D + o_d, k_r, mask=m_d)
    else:
        z2k = tiles.z2k_chunked(p_w1, p_b1, p_w2, p_z1, b_b2, b_k, b_q, o_d, m_d, o_f0, FH, D, BLOCK_F, NUM_CHUNKS,
                                True, EV_ONCE, EV_AGAIN, PREFETCH_A, p_cg1, 0.0, 0.0, False)
    g2 = tc.ln_fused_l2_bwd(z2k, b_v - b_k, gam, bet, m_d, D, EPS)  # [BD], dl/dZ2
    g2t = tc.rne(g2 * eta, CACHE_DT)
    tl.store(p_cg2 + pos * D + o_d, g2t, mask=m_d)

    # Pass B: g1, Z1', X2' and the X2' products, chunk by chunk; pass A's Z1 comes back from the
    # scratch (L1/L2) instead of W1 being walked again. Its stores were made by other threads.
    tl.debug_barrier()
    # SPLIT_B: the last position runs its own copy of the loop, so that the W2 update's tiles (and any
    # spill they cause under a register cap) do not share the ordinary positions' register allocation.
    if W2_IN_B and SPLIT_B:
        if pos == MB - 1:
            # KEEP_W2_LAST: no evict-first hint on this position's W2 reads, which the W2 slices read again
            # (an L1 miss then finds the chunk in L2 instead of DRAM).
            EV_LAST: tl.constexpr = "" if KEEP_W2_LAST else EV_ONCE
            z2q, dots = _pass_b(p_w2, p_cg1, p_cx2, p_cg2, p_z1, o_d, m_d, o_s, o_f0, m_old, m_cur, g2, g2t, eta,
                                c_i, a1, pos, FH, D, MB, BLOCK_D, BLOCK_F, BLOCK_MB, NUM_CHUNKS, REVERSE_B, EV_LAST,
                                CACHE_DT, True, W2_UPD_COLS, PREFETCH_B)
        else:
            z2q, dots = _pass_b(p_w2, p_cg1, p_cx2, p_cg2, p_z1, o_d, m_d, o_s, o_f0, m_old, m_cur, g2, g2t, eta,
                                c_i, a1, pos, FH, D, MB, BLOCK_D, BLOCK_F, BLOCK_MB, NUM_CHUNKS, REVERSE_B, EV_ONCE,
                                CACHE_DT, False, W2_UPD_COLS, PREFETCH_B)
    else:
        # One loop for every position; with W2_IN_B the W2 update runs in it at pos == b-1 (a run-time branch).
        z2q, dots = _pass_b(p_w2, p_cg1, p_cx2, p_cg2, p_z1, o_d, m_d, o_s, o_f0, m_old, m_cur, g2, g2t, eta,
                            c_i, a1, pos, FH, D, MB, BLOCK_D, BLOCK_F, BLOCK_MB, NUM_CHUNKS, REVERSE_B, EV_ONCE,
                            CACHE_DT, (pos == MB - 1) if W2_IN_B else False, W2_UPD_COLS,
                            PREFETCH_B)

    # Loaded where used (after the F walks): a tile held through them costs registers at every position.
    b_g2c = _load_rows(p_cg2, o_s, m_old, o_d, m_d, D)  # [BMB, BD]
    b_g2c = tl.where(m_cur[:, None], g2t.to(tl.float32)[None, :], b_g2c.to(tl.float32))
    a2 = tl.where(m_rows, dots + 1.0, 0.0)
    z2 = z2q + b_b2 - tl.sum(a2[:, None] * b_g2c, 0) * c_i
    out = b_q + tc.ln_fwd(z2, gam, bet, m_d, D, EPS)
    tl.store(out_ptr + pid * D + o_d, tc.rne(out, out_ptr.dtype.element_ty), mask=m_d)

    # End of the mini-batch: the rank-b update from the cache rows, which this program's other threads
    # just completed (the barrier makes them visible), in column slices of at most 64.
    if pos == MB - 1:
        tl.debug_barrier()
        m_all = o_s < MB
        UPD_F: tl.constexpr = min(BLOCK_F, 64)
        o_u0 = tl.arange(0, UPD_F)
        for ci in range((FH + UPD_F - 1) // UPD_F):
            o_u = ci * UPD_F + o_u0
            m_u = o_u < FH
            if not DEFER_W1:
                tc.update_tile(p_w1, p_ck, p_cg1, o_d, m_d, o_u, m_u, o_s, m_all, FH, D, FH, c_i, MB, True, True)
            if not W2_IN_B:
                tc.update_tile(p_w2, p_cx2, p_cg2, o_u, m_u, o_d, m_d, o_s, m_all, D, FH, D, c_i, MB, True, True)
            tc.update_bias(p_b1, p_cg1, o_u, m_u, o_s, m_all, FH, c_i)
        tc.update_bias(p_b2, p_cg2, o_d, m_d, o_s, m_all, D, c_i)
    if GATE_NORM:
        tc.finish_row(out_ptr, y_ptr, nw_ptr, nb_ptr, cnt_ptr, p_ptr, i_b, H, stride_p, g_col, gn_eps, D, BLOCK_ROW,
                      HAS_GATE)


# ---------------------------------------------------------------- launch
CAP_MIN_BATCH = 128  # the register-capped configuration from this batch on (dual_config)
GATE_NORM_MIN_BATCH = 512  # the post-norm folded into the kernel from this batch on (dual_config)


def dual_config(batch: int, head_dim: int, state_dtype: torch.dtype) -> dict:
    """Hand-picked launch configuration (no autotune: the state is updated in place); one for every batch.

    H200, ttt-1b shapes, fp16 state (exp/NOTES.md, "H200 kernel sweeps"; records
    exp/results/h200/kernel_sweep_round*.jsonl): 32-column chunks, 1 warp per item (8 resident per
    multiprocessor), each chunk loaded when reached, L2 hints that keep W2 for the second walk
    (evict last in pass A, evict first after) and the second walk in reverse order: 617 us at B = 512
    in round 4, against 699 us for 64-column chunks with 2 warps and no hints, and 745-758 us for the
    55c2540 default (64 columns, 2 warps, the next chunk requested ahead) in rounds 1-3. Whole-head tiles
    staged in shared memory by persistent programs (tensor-core products, 1-8 warps) read 944-2683 us.
    More warps for larger heads (a [128, 32] chunk at f = 128). W2_IN_B: round 9 (W2's end-of-mini-batch
    update in pass B), 601 against 618 us at B = 512. Rounds 10-11 (exp/results/h200/kernel_sweep_round1[01]_*):
    from CAP_MIN_BATCH on, at f = 64 with fp16/bf16 state, a 168-register cap (maxnreg: 12 one-warp programs a
    multiprocessor instead of 8), which the kernel fits without spills in its loops (offline for sm_90) once
    the W2 update is done in 32-column slices of the chunk read again from L1 (W2_UPD_COLS): 556 against
    601 us at B = 512, 151 against 157 at B = 128; at B = 64 (2048 items, two short waves) the cap lost,
    91 against 81 us. SPLIT_B: the last position's pass B as its own loop (round 12: 540 against 546 us at
    B = 512), so that the update's tiles do not share the ordinary positions' register allocation. W1's
    update moved into that loop as well (round 13, at 0cdc023 only) lost: 578 against 549 us. KEEP_W2_LAST
    (round 14): that position's W2 reads without the evict-first hint, 544 against 550 us. float32
    state and other head dims keep the compiler's own register count (untimed under a cap). PREFETCH_B (rounds
    19-20, session 13): pass B's next cache rows requested into L2, with the capped kernel its W2 rows too: 522.5
    against 534.2 us at B = 512, 77.7 against 80.4 at B = 64 (rows only; rows + W2 79.3)."""
    # GATE_NORM (session 16, exp/results/h100/gate_norm_fold_h100_fc257ad/): the model's post-norm and gate in
    # the kernel (tc.finish_row) rather than gate_norm's own kernel after it, from GATE_NORM_MIN_BATCH on: 692.8
    # against 694.0 us at B = 512 on an H100 (one launch a layer less, 200 a ttt-1b step); at B = 64 and 128 it
    # lost 2% (97.2 against 95.0, 189.8 against 185.9 us: every program's release fence before its count).
    fold = batch >= GATE_NORM_MIN_BATCH
    if batch >= CAP_MIN_BATCH and head_dim == 64 and state_dtype in (torch.float16, torch.bfloat16):
        return {"BLOCK_F": 32, "num_warps": 1, "maxnreg": 168, "L2_HINTS": True, "REVERSE_B": True, "W2_IN_B": True,
                "W2_UPD_COLS": 32, "SPLIT_B": True, "KEEP_W2_LAST": True, "PREFETCH_B": 2, "GATE_NORM": fold}
    return {"BLOCK_F": 32, "num_warps": max(1, head_dim // 64), "maxnreg": None, "L2_HINTS": True, "REVERSE_B": True,
            "W2_IN_B": True, "PREFETCH_B": 1, "GATE_NORM": fold}


def kernel_constants(cfg: dict, head_dim: int, hidden: int, mini_batch: int, prefetch: bool, defer_w1: bool) -> dict:
    """The kernel's constexprs (all but the fused prologue's) for a launch configuration, shared by `launch`
    and `compile_offline`. prefetch False (the interpreter, which cannot run inline PTX) drops the L2
    prefetches, which change no result. defer_w1 is the cache convention (naive.DEFER_W1, read at each
    launch), not a launch configuration: the reference and every reader of the state follow the same one."""
    f, F = head_dim, hidden
    return {"D": f, "FH": F, "MB": mini_batch, "BLOCK_D": tc.pow2(f), "BLOCK_F": min(cfg["BLOCK_F"], tc.pow2(F)),
            "BLOCK_MB": max(16, tc.pow2(mini_batch)), "EPS": TTT_NORM_EPS,
            "L2_HINTS": cfg.get("L2_HINTS", False), "REVERSE_B": cfg.get("REVERSE_B", False),
            "W2_IN_B": cfg.get("W2_IN_B", False), "W2_UPD_COLS": min(cfg.get("W2_UPD_COLS", 0), tc.pow2(f)),
            "SPLIT_B": cfg.get("SPLIT_B", False), "KEEP_W2_LAST": cfg.get("KEEP_W2_LAST", False),
            "PREFETCH_A": cfg.get("PREFETCH_A", 0) if prefetch else 0,
            "PREFETCH_B": int(cfg.get("PREFETCH_B", 0)) if prefetch else 0,
            "DEFER_W1": defer_w1}


_FP32_ARGS, _I64_ARGS = {"eta_ptr", "c_ptr", "z1_ptr", "cos_ptr", "sin_ptr"}, {"pos_ptr", "cpos_ptr", "rpos_ptr"}


def compile_offline(cfg: dict, capability: int = 90, head_dim: int = 64, mini_batch: int = 16,
                    model_step: bool = False):
    """The kernel compiled for an NVIDIA target without a GPU (Triton's bundled ptxas) under a launch
    configuration: fp16 tensors (eta, c and the Z1 scratch float32, positions int64), q and k given
    (FUSED_QK off, as the kernel micro-benchmark calls it), pointers, H and the strides marked 16-byte
    divisible as the launcher specialises them; cfg's DEFER_W1, if any, picks the cache convention compiled
    (default naive.DEFER_W1). For inspection (exp/gpu/offline_sass.py: registers,
    spills, SASS) and for the CPU test that the configuration's prefetches reach the PTX; needs
    TRITON_INTERPRET unset at import. model_step: as the model's step launches it instead, with qk_prep's work
    (conv width 4, with biases) and the post-norm and gate of ttt-1b's rows (32 heads)."""
    from triton.backends.compiler import GPUTarget

    consts = {**kernel_constants(cfg, head_dim, 4 * head_dim, mini_batch, prefetch=True,
                                 defer_w1=cfg.get("DEFER_W1", naive.DEFER_W1)),
              "FUSED_QK": model_step, "HAS_QK_BIAS": model_step, "WIDTH": 4 if model_step else 1,
              "GATE_NORM": model_step, "HAS_GATE": model_step, "BLOCK_ROW": 32 * head_dim if model_step else 16}
    sig, attrs = {}, {}
    for i, n in enumerate(_m2_dual_kernel.arg_names):
        if n in consts:
            sig[n] = "constexpr"
        elif n.endswith("_ptr"):
            sig[n] = ("*fp32" if n in _FP32_ARGS else "*i64" if n in _I64_ARGS else "*i32" if n == "cnt_ptr"
                      else "*fp16")
            attrs[(i,)] = [["tt.divisibility", 16]]
        else:
            sig[n] = "fp32" if n in ("eta_scale", "gn_eps") else "i32"
            if n == "H" or n.startswith("stride_"):
                attrs[(i,)] = [["tt.divisibility", 16]]
    src = triton.compiler.ASTSource(fn=_m2_dual_kernel, signature=sig, constexprs=consts, attrs=attrs)
    opts = {k: cfg[k] for k in ("num_warps", "maxnreg", "num_stages") if cfg.get(k)}
    return triton.compile(src, target=GPUTarget("cuda", capability, 32), options=opts)


def launch(q, k, v, eta, c, gamma, beta, pos, W1, b1, W2, b2, ck, cg1, cx2, cg2, out, config=None, qk=None,
           gn=None):
    """Run the dual step's kernel into out [B, H, f] with a launch configuration (default dual_config).

    The tensors as the custom op takes them; nothing is checked here (decode_step_dual checks). qk:
    qk_prep's inputs (tc.qk_kernel_args), computed into q, k, eta, c in the kernel's prologue; q, k,
    eta, c are then None. gn (with qk): the post-norm and gate of the rows into gn["y"] as well
    (tc.gn_kernel_args): in the kernel where the configuration says GATE_NORM, else by gate_norm's own kernel
    after it."""
    B, H, f = v.shape
    assert gn is None or qk is not None, "the post-norm is fused with the fused prologue only"
    p = qk["p"] if qk is not None else None
    if qk is not None:
        q = k = eta = c = v  # placeholders: the kernel computes them
    cfg = config or dual_config(B, f, W1.dtype)
    fold = gn if cfg.get("GATE_NORM") else None
    qk_args, qk_consts = tc.qk_kernel_args(qk, v, f)
    gn_args, gn_consts = tc.gn_kernel_args(fold, v, H * f)
    F = W1.shape[-1]
    z1 = torch.empty(B * H * 2 * F, dtype=torch.float32, device=q.device)  # pass A's Z1, per item
    _m2_dual_kernel[(B * H,)](
        q, k, v, eta, c, gamma, beta, pos, W1, b1, W2, b2, ck, cg1, cx2, cg2, out, z1,
        H, q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), eta.stride(0), eta.stride(1),
        *qk_args, *gn_args,
        **kernel_constants(cfg, f, F, ck.shape[2], prefetch=not interpreting(), defer_w1=naive.DEFER_W1),
        **qk_consts, **gn_consts, **tc.launch_options(cfg))
    return gate_norm_rows(out, p, gn if fold is None else None)


step_op("ttt_mlp_dual_step", ("q", "k", "v", "eta", "c", "gamma", "beta", "pos", "W1", "b1", "W2", "b2", "cache_k",
                              "cache_g1", "cache_x2", "cache_g2"),
        ("W1", "b1", "W2", "b2", "cache_k", "cache_g1", "cache_x2", "cache_g2"), launch)
_STATE = ("W1", "b1", "W2", "b2", "cache_k", "cache_g1", "cache_x2", "cache_g2")
tc.qk_step_op("ttt_mlp_dual_step_qk", _STATE, _STATE, launch)


def decode_step_dual(q, k, v, eta, c, gamma, beta, state: TTTState, cache: DualCache, advance: bool = True):
    """One token, dual form; same arguments and semantics as naive.decode_step_dual. -> out [B, H, f].

    Mutates: cache rows at pos (and pos itself if advance), state at the last mini-batch position."""
    naive.check_convention()
    tc.check_kernel_inputs("ttt_mlp dual decode", q, k, v, eta, c, gamma, beta, state, cache, mlp=True, dual=True)
    out = torch.ops.ttt_decode.ttt_mlp_dual_step(q, k, v, eta, c, gamma, beta, cache.pos, state.W1, state.b1,
                                                 state.W2, state.b2, cache.k, cache.g1, cache.x2, cache.g2)
    if advance:
        tc.advance_pos(cache.pos, cache.mini_batch_size)
    return out


def decode_step_dual_qk(p, ring, conv_pos, wq, bq, wk, bk, rope_cos, rope_sin, rot_pos, lr_bias, token_idx,
                        base_lr: float, num_heads: int, lr_col: int, v_col: int, gamma, beta, state: TTTState,
                        cache: DualCache, advance: bool = True, gate_norm: GateNorm | None = None):
    """ops.ttt_block.qk_prep's arguments, then decode_step_dual's without q, k, eta, c (and v as the
    columns v_col .. v_col + H f of p): the same function as qk_prep followed by decode_step_dual, with
    qk_prep's work done in the kernel's prologue (one launch instead of two, and q, k never written to
    memory). -> out [B, H, f]; with gate_norm, ops.ttt_block.gate_norm of out's rows (heads flattened) as
    well, and the result is o_proj's input y [B, H f]: in the kernel where dual_config says GATE_NORM (one
    launch instead of two), else by gate_norm's kernel after it.

    Mutates: ring (q0 into slot conv_pos), the cache rows at pos (and pos if advance), the state at
    the last mini-batch position (and gate_norm's counters, zero again when it returns)."""
    naive.check_convention()
    tc.check_qk_step_inputs("ttt_mlp dual decode", p, ring, conv_pos, wq, bq, wk, bk, rope_cos, rope_sin, rot_pos,
                            lr_bias, token_idx, num_heads, lr_col, v_col, gamma, beta, state, cache, mlp=True)
    qk = (p, ring, conv_pos, wq, bq, wk, bk, rope_cos, rope_sin, rot_pos, lr_bias, token_idx)
    tensors = (gamma, beta, cache.pos, state.W1, state.b1, state.W2, state.b2, cache.k, cache.g1, cache.x2, cache.g2)
    return tc.run_qk_step("ttt_mlp dual decode", torch.ops.ttt_decode.ttt_mlp_dual_step_qk,
                          torch.ops.ttt_decode.ttt_mlp_dual_step_qk_gn, qk, tensors, base_lr, lr_col, v_col, gamma,
                          cache, advance, gate_norm)
