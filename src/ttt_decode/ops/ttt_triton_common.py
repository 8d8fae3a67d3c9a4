"""Pieces shared by the Triton TTT decode kernels (ttt_linear/ and ttt_mlp/ triton_decode.py, triton_primal.py).

- jit helpers: gelu (tanh approximation) with its derivative, the inner LayerNorm forward and its
  backward fused with the L2 loss (ops.ttt_common's arithmetic, in float32, masked for head dims
  that are not a power of two), rounding to the cache dtype, the token's inputs, and the dual form's
  end-of-mini-batch update of a state tile from the cache rows;
- the boundary checks every kernel wrapper runs before its launch (shapes through
  ops.ttt_common.check_decode_inputs, then dtypes, contiguity and supported sizes), raising
  UserError for what a user can get wrong and asserting what only a caller bug can break;
- `advance_pos`, the tiny op that moves the mini-batch position after a kernel when the caller
  asks for it (a kernel cannot: its other programs still read the position).

Note on the Triton interpreter (CPU tests): a constexpr on the left of an operator with a tensor
(`K * x`) fails in Triton 3.8's interpreter, so products are written tensor first (`x * K`).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ttt_decode.errors import UserError
from ttt_decode.ops.kernel_op import interpreting, kernel_op
from ttt_decode.ops.ttt_common import DualCache, PrimalCache, check_decode_inputs

ACT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
STATE_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
# Head dims the kernels take: at most 128 (M2 hidden 4f up to 512), at least 16 (tl.arange, tl.dot and
# the row tiles need 16 lanes); sizes that are not a power of two are masked (e.g. 96).
MIN_HEAD_DIM, MAX_HEAD_DIM = 16, 128
MAX_MINI_BATCH = 64


@triton.jit
def rne(x, DT: tl.constexpr):
    """float32 x cast to DT, rounding to nearest even.

    bfloat16 is rounded explicitly on the bits: the Triton interpreter (the CPU tests) truncates
    float32 -> bfloat16 casts, which would double the rounding error the tests measure. The rounded
    value is exact in bfloat16, so on the GPU the result is the same as its cvt.rn."""
    if DT == tl.bfloat16:
        bits = x.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        return bits.to(tl.float32, bitcast=True).to(DT)
    else:
        return x.to(DT)


@triton.jit
def prefetch_l2(ptrs, mask):
    """Ask L2 for the 128-byte lines that hold ptrs where mask is set (`prefetch.global.L2`). No register
    receives the data, so nothing waits on the request and nothing is held across the code after it: a
    tile needed a chunk later comes from L2 instead of DRAM without costing residency. CUDA only (inline
    PTX): kernels take it behind a constexpr that their launchers clear under the interpreter."""
    tl.inline_asm_elementwise(
        "{ .reg .pred p; setp.ne.s32 p, $2, 0; @p prefetch.global.L2 [$1]; mov.u32 $0, 0; }",
        "=r,l,r", [ptrs, mask.to(tl.int32)], dtype=tl.int32, is_pure=False, pack=1)


@triton.jit
def prefetch_rows_l2(p_base, o_r, m_r, col0, stride, NCOLS, BLOCK_COLS: tl.constexpr):
    """prefetch_l2 of the NCOLS-element segments starting at column col0 of rows o_r (masked by m_r) of a
    row-major array with `stride` elements a row, BLOCK_COLS >= NCOLS a power of two: one request per
    128-byte line of each segment (segments start on a 128- or 64-byte boundary here)."""
    LINE: tl.constexpr = 128 // (p_base.dtype.element_ty.primitive_bitwidth // 8)  # elements a line
    SEG: tl.constexpr = max(1, BLOCK_COLS // LINE)
    o_l = tl.arange(0, SEG) * LINE
    prefetch_l2(p_base + o_r[:, None] * stride + col0 + o_l[None, :], m_r[:, None] & (o_l < NCOLS)[None, :])


# sqrt(2 / pi) and 2 sqrt(2 / pi) log2(e): gelu_tanh(x) = 0.5 x (1 + tanh(u)) = x sigmoid(2u),
# u = sqrt(2 / pi) (x + 0.044715 x^3); sigmoid through exp2 and an approximate reciprocal (2 ulp).
_K0 = tl.constexpr(0.7978845608028654)
_K1 = tl.constexpr(2.302208198110385)


@triton.jit
def _sigmoid_2u(x):
    e = tl.exp2((x + x * x * x * 0.044715) * (-_K1))
    return tl.fdiv(1.0, e + 1.0)


@triton.jit
def gelu_and_grad(x):
    """gelu_tanh(x) and its derivative s + 2 x s (1 - s) u', s = sigmoid(2u)."""
    s = _sigmoid_2u(x)
    y = x * s
    dy = s + x * s * (1.0 - s) * (x * x * 0.134145 + 1.0) * (2.0 * _K0)
    return y, dy


@triton.jit
def gelu(x):
    return x * _sigmoid_2u(x)


@triton.jit
def ln_fwd(z, gamma, beta, m, N: tl.constexpr, EPS: tl.constexpr):
    """LayerNorm of a [BLOCK] vector whose first N entries (mask m) are real; padded entries give 0."""
    mu = tl.sum(z, 0) * (1.0 / N)
    d = tl.where(m, z - mu, 0.0)
    rstd = tl.math.rsqrt(tl.sum(d * d, 0) * (1.0 / N) + EPS)
    return tl.where(m, gamma * (d * rstd) + beta, 0.0)


@triton.jit
def ln_fused_l2_bwd(z, target, gamma, beta, m, N: tl.constexpr, EPS: tl.constexpr):
    """d/dz of 1/2 ||LN(z) - target||^2 for a [BLOCK] vector (mask m); z is 0 at padded entries."""
    mu = tl.sum(z, 0) * (1.0 / N)
    d = tl.where(m, z - mu, 0.0)
    rstd = tl.math.rsqrt(tl.sum(d * d, 0) * (1.0 / N) + EPS)
    xh = d * rstd
    gxh = tl.where(m, (gamma * xh + beta - target) * gamma, 0.0)
    return tl.where(m, (gxh * N - tl.sum(gxh, 0) - xh * tl.sum(gxh * xh, 0)) * (rstd * (1.0 / N)), 0.0)


@triton.jit
def load_token_inputs(q_ptr, k_ptr, v_ptr, eta_ptr, c_ptr, gamma_ptr, beta_ptr, pos, i_b, i_h, o_d, m_d,
                      stride_qb, stride_qh, stride_kb, stride_kh, stride_vb, stride_vh, stride_eb, stride_eh,
                      D: tl.constexpr):
    """This token's q, k, v [BLOCK_D] and eta of (sequence i_b, head i_h), the coefficient c_pos, and
    the head's inner LayerNorm gamma, beta [BLOCK_D]; all in float32 (the kernels' arithmetic)."""
    b_q = tl.load(q_ptr + i_b * stride_qb + i_h * stride_qh + o_d, mask=m_d, other=0.0).to(tl.float32)
    b_k = tl.load(k_ptr + i_b * stride_kb + i_h * stride_kh + o_d, mask=m_d, other=0.0).to(tl.float32)
    b_v = tl.load(v_ptr + i_b * stride_vb + i_h * stride_vh + o_d, mask=m_d, other=0.0).to(tl.float32)
    eta = tl.load(eta_ptr + i_b * stride_eb + i_h * stride_eh).to(tl.float32)
    c_i = tl.load(c_ptr + pos).to(tl.float32)
    gam = tl.load(gamma_ptr + i_h * D + o_d, mask=m_d, other=0.0).to(tl.float32)
    bet = tl.load(beta_ptr + i_h * D + o_d, mask=m_d, other=0.0).to(tl.float32)
    return b_q, b_k, b_v, eta, c_i, gam, bet


# ---------------------------------------------------------------- the q / k conv ring and rotary
# qk_prep's pieces (ops/ttt_block_triton.py), shared with the dual kernels' fused prologue below.
@triton.jit
def tap(w_ptr, j, o, m, dim, COMPUTE: tl.constexpr):
    """Tap j of a conv's tap-major weights [W, D] for the columns o: one contiguous row, loaded in the
    row's own layout. (The [D, W] parameter read as a [BLOCK, W] tile took each tap's column out with
    a reduction whose result lands in another layout: 8 shared-memory conversions with barriers in
    qk_prep, offline for sm_90.)"""
    return tl.load(w_ptr + j * dim + o, mask=m, other=0.0).to(COMPUTE)


@triton.jit
def ring_old_taps(ring_ptr, row_base, pos, w_ptr, b_ptr, o, m, dim,
                  WIDTH: tl.constexpr, HAS_BIAS: tl.constexpr, COMPUTE: tl.constexpr):
    """The part of a causal conv step that does not need the new input: bias + the ring's WIDTH-1 newest
    slots times their taps -> (that sum, the new input's tap), both [BLOCK] in COMPUTE.

    Called before anything waits on the new input (the RMSNorm's reduction in pre_conv_step), so that
    its loads are in flight while that runs: a load placed after a reduction's barrier or after a store
    to another pointer is issued only then."""
    acc = tl.zeros_like(o).to(COMPUTE)
    if HAS_BIAS:
        acc += tl.load(b_ptr + o, mask=m, other=0.0).to(COMPUTE)
    for j in tl.static_range(WIDTH - 1):
        slot = (pos + 1 + j) % WIDTH
        x_s = tl.load(ring_ptr + row_base + slot * dim + o, mask=m, other=0.0).to(COMPUTE)
        acc += x_s * tap(w_ptr, j, o, m, dim, COMPUTE)
    return acc, tap(w_ptr, WIDTH - 1, o, m, dim, COMPUTE)


@triton.jit
def ring_old_taps_qk(ring_ptr, row_base, pos, wq_ptr, bq_ptr, wk_ptr, bk_ptr, o, m, dim,
                     WIDTH: tl.constexpr, HAS_BIAS: tl.constexpr, COMPUTE: tl.constexpr):
    """ring_old_taps for two convs over one ring (qk_prep's q and k convs of the same input): each
    slot is loaded once and used by both -> (q's sum, q's new-input tap, k's sum, k's new-input tap).

    Called before the q conv's stores, for the reason ring_old_taps gives."""
    q = tl.zeros_like(o).to(COMPUTE)
    k = tl.zeros_like(o).to(COMPUTE)
    if HAS_BIAS:
        q += tl.load(bq_ptr + o, mask=m, other=0.0).to(COMPUTE)
        k += tl.load(bk_ptr + o, mask=m, other=0.0).to(COMPUTE)
    for j in tl.static_range(WIDTH - 1):
        slot = (pos + 1 + j) % WIDTH
        x_s = tl.load(ring_ptr + row_base + slot * dim + o, mask=m, other=0.0).to(COMPUTE)
        q += x_s * tap(wq_ptr, j, o, m, dim, COMPUTE)
        k += x_s * tap(wk_ptr, j, o, m, dim, COMPUTE)
    return q, tap(wq_ptr, WIDTH - 1, o, m, dim, COMPUTE), k, tap(wk_ptr, WIDTH - 1, o, m, dim, COMPUTE)


@triton.jit
def rotary(x, cos, sin, BLOCK: tl.constexpr):
    """Rotate the interleaved pairs (x[2j], x[2j+1]) of a row x [BLOCK] by cos, sin [BLOCK // 2]."""
    x_e, x_o = tl.split(tl.reshape(x, (BLOCK // 2, 2)))
    return tl.reshape(tl.join(x_e * cos - x_o * sin, x_o * cos + x_e * sin), (BLOCK,))


@triton.jit
def token_coeff(tok_ptr, pos):
    """c_pos = max(0, 1/(pos+1) + learnable_token_idx[pos]) in float32, rounded to the parameter's dtype
    where ops.ttt_common.token_coeffs rounds."""
    TOK: tl.constexpr = tok_ptr.dtype.element_ty
    base = rne(1.0 / (pos + 1).to(tl.float32), TOK).to(tl.float32)
    return tl.maximum(rne(base + tl.load(tok_ptr + pos).to(tl.float32), TOK).to(tl.float32), 0.0)


@triton.jit
def ring_token_inputs(p_ptr, ring_ptr, cpos_ptr, wq_ptr, bq_ptr, wk_ptr, bk_ptr, cos_ptr, sin_ptr, rpos_ptr,
                      lrb_ptr, tok_ptr, v_ptr, gamma_ptr, beta_ptr, pos, i_b, i_h, o_d, m_d,
                      stride_p, stride_vb, stride_vh, lr_col, eta_scale, dim,
                      D: tl.constexpr, BLOCK_D: tl.constexpr, HAS_BIAS: tl.constexpr, WIDTH: tl.constexpr):
    """load_token_inputs with qk_prep's work folded in, for one (sequence i_b, head i_h): the dual
    kernels' fused prologue, which saves qk_prep's launch and its q, k round trip through memory.

    From the in_proj row p [>= lr_col + H] (q0 in columns i_h D .. i_h D + D) and the q/k conv ring
    [B, WIDTH, dim]: q, k = rotary(conv_q(q0)), rotary(conv_k(q0)) at rotary row rpos, each rounded to
    p's dtype where qk_prep rounds (so the values are those qk_prep stores); q0 goes into ring slot
    cpos after the old slots are read (this program's columns only); eta = eta_scale sigmoid(lr +
    lr_bias); c_pos. Returns what load_token_inputs returns, all float32."""
    ACT: tl.constexpr = p_ptr.dtype.element_ty
    cols = i_h * D + o_d
    row_p = p_ptr + i_b * stride_p
    x = tl.load(row_p + cols, mask=m_d, other=0.0).to(tl.float32)
    cpos = tl.load(cpos_ptr)
    base = i_b * WIDTH * dim
    q_old, wq_new, k_old, wk_new = ring_old_taps_qk(ring_ptr, base, cpos, wq_ptr, bq_ptr, wk_ptr, bk_ptr, cols, m_d,
                                                    dim, WIDTH, HAS_BIAS, tl.float32)
    jj = tl.arange(0, BLOCK_D // 2)
    m_half = jj < D // 2
    rot = tl.load(rpos_ptr) * (D // 2)
    # The rotary row of this mini-batch position (pair j at column j of the table), rounded as qk_prep does.
    cos = rne(tl.load(cos_ptr + rot + jj, mask=m_half, other=0.0).to(tl.float32), ACT).to(tl.float32)
    sin = rne(tl.load(sin_ptr + rot + jj, mask=m_half, other=0.0).to(tl.float32), ACT).to(tl.float32)
    b_q = rne(rotary(rne(q_old + x * wq_new, ACT).to(tl.float32), cos, sin, BLOCK_D), ACT).to(tl.float32)
    b_k = rne(rotary(rne(k_old + x * wk_new, ACT).to(tl.float32), cos, sin, BLOCK_D), ACT).to(tl.float32)
    lr = tl.load(row_p + lr_col + i_h).to(tl.float32) + tl.load(lrb_ptr + i_h).to(tl.float32)
    eta = eta_scale / (1.0 + tl.exp(-lr))
    c_i = token_coeff(tok_ptr, pos)
    b_v = tl.load(v_ptr + i_b * stride_vb + i_h * stride_vh + o_d, mask=m_d, other=0.0).to(tl.float32)
    gam = tl.load(gamma_ptr + i_h * D + o_d, mask=m_d, other=0.0).to(tl.float32)
    bet = tl.load(beta_ptr + i_h * D + o_d, mask=m_d, other=0.0).to(tl.float32)
    # After every load above: a load placed after a store to another pointer is issued only then.
    tl.store(ring_ptr + base + cpos * dim + cols, x.to(ring_ptr.dtype.element_ty), mask=m_d)
    return b_q, b_k, b_v, eta, c_i, gam, bet


# ---------------------------------------------------------------- the end-of-mini-batch update
@triton.jit
def update_tile(p_w, p_ra, p_rb, o_r, m_r, o_c, m_c, o_s, m_s, stride_w, stride_a, stride_b, scale,
                MB: tl.constexpr, DOT: tl.constexpr, F16_MMA: tl.constexpr = False):
    """W[o_r, o_c] -= scale sum_s A[s, o_r]^T B[s, o_c]: the dual form's rank-b state update of one tile.

    A, B are the mini-batch's cache rows (all b of them: the caller stores this token's row and
    puts a barrier first). DOT: one tl.dot over the rows (with F16_MMA fp16 rows as they are, else
    float32 through 3xTF32: error ~1e-7 of the update), else a loop of b rank-1 updates on the CUDA cores."""
    m = m_r[:, None] & m_c[None, :]
    p = p_w + o_r[:, None] * stride_w + o_c[None, :]
    if DOT:
        b_a = tl.load(p_ra + o_s[:, None] * stride_a + o_r[None, :], mask=m_s[:, None] & m_r[None, :], other=0.0)
        b_b = tl.load(p_rb + o_s[:, None] * stride_b + o_c[None, :], mask=m_s[:, None] & m_c[None, :], other=0.0)
        if F16_MMA and p_ra.dtype.element_ty == tl.float16:
            # fp16 rows (the cache dtype): their products are exact in float32, so one MMA pass with
            # float32 accumulation is as accurate as the CUDA-core loop, at a third of tf32x3's work.
            acc = tl.dot(tl.trans(b_a), b_b)
        else:
            acc = tl.dot(tl.trans(b_a.to(tl.float32)), b_b.to(tl.float32), input_precision="tf32x3")
    else:
        acc = tl.zeros(m.shape, dtype=tl.float32)
        for s in range(MB):
            r_a = tl.load(p_ra + s * stride_a + o_r, mask=m_r, other=0.0).to(tl.float32)
            r_b = tl.load(p_rb + s * stride_b + o_c, mask=m_c, other=0.0).to(tl.float32)
            acc += r_a[:, None] * r_b[None, :]
    b_w = tl.load(p, mask=m, other=0.0).to(tl.float32)
    tl.store(p, rne(b_w - acc * scale, p_w.dtype.element_ty), mask=m)


@triton.jit
def update_bias(p_b, p_rows, o_c, m_c, o_s, m_s, stride, scale):
    """b[o_c] -= scale sum_s rows[s, o_c] over the mini-batch's cache rows."""
    b_r = tl.load(p_rows + o_s[:, None] * stride + o_c[None, :], mask=m_s[:, None] & m_c[None, :], other=0.0)
    b = tl.load(p_b + o_c, mask=m_c, other=0.0).to(tl.float32)
    tl.store(p_b + o_c, rne(b - tl.sum(b_r.to(tl.float32), 0) * scale, p_b.dtype.element_ty), mask=m_c)


# ---------------------------------------------------------------- the post-norm and gate, in the kernel
# ops.ttt_block.gate_norm (o_proj's input y = gelu_tanh(g) * LayerNorm(z) over a sequence's H f columns) done by
# the dual kernels after their item: LayerNorm needs every head of the row, so the program that finishes a row's
# last head (an atomic count per row) reads the row's H outputs back from L2 and writes y. One launch a layer
# less than the separate _gate_norm_kernel (ops/ttt_block_triton.py), whose arithmetic and roundings these are
# (float32 only: the fold is never dispatched for float64). Where it pays: the dual_config comments.
@triton.jit
def row_finished(cnt_ptr, i_b, H):
    """Count one more finished head of row i_b; true in the program that finished its last (the count is
    back to 0 there, for the next call). After this program's output stores: the barrier orders every
    lane's store before the release."""
    tl.debug_barrier()
    done = tl.atomic_add(cnt_ptr + i_b, 1, sem="acq_rel", scope="gpu") == H - 1
    if done:
        tl.store(cnt_ptr + i_b, 0)
    return done


@triton.jit
def gate_norm_row(z_ptr, g_ptr, w_ptr, b_ptr, y_ptr, o, dim, eps, HAS_GATE: tl.constexpr):
    """y[o] = gelu_tanh(g[o]) * LayerNorm(z)[o] for one row of dim columns; o: its columns (a tensor of any
    1-D layout, length a power of two >= dim, built by the caller, so a Gluon kernel can call this too);
    z_ptr, g_ptr, y_ptr at the row's first column. z is read past L1 (other programs wrote it), g, w, b
    after the statistics (fewer registers held through the reductions)."""
    OUT: tl.constexpr = y_ptr.dtype.element_ty
    m = o < dim
    z = tl.load(z_ptr + o, mask=m, other=0.0, cache_modifier=".cg")  # held in z's own dtype (registers)
    mean = tl.sum(z.to(tl.float32), axis=0) / dim
    d = tl.where(m, z.to(tl.float32) - mean, 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(d * d, axis=0) / dim + eps)
    w = tl.load(w_ptr + o, mask=m, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + o, mask=m, other=0.0).to(tl.float32)
    y = rne(d * rstd * w + b, OUT)  # rne: bfloat16 rounded to nearest under the interpreter too
    if HAS_GATE:
        g = tl.load(g_ptr + o, mask=m, other=0.0).to(tl.float32)
        y = rne(rne(gelu(g), OUT).to(tl.float32) * y.to(tl.float32), OUT)
    tl.store(y_ptr + o, y, mask=m)


@triton.jit
def finish_row(out_ptr, y_ptr, nw_ptr, nb_ptr, cnt_ptr, p_ptr, i_b, H, stride_p, g_col, gn_eps,
               D: tl.constexpr, BLOCK_ROW: tl.constexpr, HAS_GATE: tl.constexpr):
    """After a Triton dual kernel's item (sequence i_b, one head) stored its output row out[i_b, h, :]: if it
    finished the row's last head, gate_norm_row over the row's H D columns into y[i_b, :] (gate: p's
    columns g_col ..)."""
    if row_finished(cnt_ptr, i_b, H):
        dim = H * D
        gate_norm_row(out_ptr + i_b * dim, p_ptr + i_b * stride_p + g_col, nw_ptr, nb_ptr, y_ptr + i_b * dim,
                      tl.arange(0, BLOCK_ROW), dim, gn_eps, HAS_GATE)


# ---------------------------------------------------------------- host side
def check_kernel_inputs(name, q, k, v, eta, c, gamma, beta, state, cache, mlp: bool, dual: bool) -> None:
    """Everything a Triton TTT decode kernel needs of its arguments, checked before the launch."""
    want = DualCache if dual else PrimalCache
    if not isinstance(cache, want):
        raise UserError(f"{name}: needs a {want.__name__}, got {type(cache).__name__}")
    check_decode_inputs(q, k, v, eta, c, gamma, beta, state, cache, mlp)
    B, H, f = q.shape
    b = cache.mini_batch_size
    if not (MIN_HEAD_DIM <= f <= MAX_HEAD_DIM):
        raise UserError(f"{name}: head dim {f} is not supported by the Triton kernel (it takes "
                        f"{MIN_HEAD_DIM}..{MAX_HEAD_DIM}); use impl='naive' or a model with head_dim <= {MAX_HEAD_DIM}")
    if not (2 <= b <= MAX_MINI_BATCH):
        raise UserError(f"{name}: mini-batch size {b} is not supported by the Triton kernel (it takes "
                        f"2..{MAX_MINI_BATCH}); use impl='naive'")
    if q.dtype not in ACT_DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        raise UserError(f"{name}: q, k, v must share one dtype of float16, bfloat16, float32 (got {q.dtype}, "
                        f"{k.dtype}, {v.dtype}); float64 runs with impl='naive'")
    tensors = {**{f"state.{n}": t for n, t in state.tensors().items()},
               **{f"cache.{n}": t for n, t in cache.tensors().items() if n != "pos"}}
    s_dtype = state.W1.dtype
    for n, t in tensors.items():
        if t.dtype != s_dtype or s_dtype not in STATE_DTYPES:
            raise UserError(f"{name}: state and cache must share one dtype of float16, bfloat16, float32 "
                            f"({n} is {t.dtype}, state.W1 {s_dtype}); float64 runs with impl='naive'")
    devices = {t.device for t in (q, k, v, eta, c, gamma, beta, cache.pos, *tensors.values())}
    if len(devices) != 1:
        raise UserError(f"{name}: all tensors must be on one device, got {sorted(map(str, devices))}")
    if q.device.type != "cuda" and not interpreting():
        raise UserError(f"{name}: the Triton kernels need a CUDA GPU; on CPU set TRITON_INTERPRET=1 (slow, for "
                        f"tests) or use impl='naive'")
    # In-place updates land in these exact tensors: never copy, refuse instead.
    for n, t in tensors.items():
        assert t.is_contiguous(), f"{name}: {n} must be contiguous (it is updated in place), strides {t.stride()}"
    for n, t in (("q", q), ("k", k), ("v", v)):
        assert t.stride(2) == 1, f"{name}: {n} must be contiguous along the head dim, strides {t.stride()}"
    assert gamma.is_contiguous() and beta.is_contiguous() and c.is_contiguous(), f"{name}: gamma, beta, c contiguous"
    assert cache.pos.numel() == 1 and cache.pos.dtype == torch.int64, f"{name}: cache.pos must be a [1] int64 tensor"


# The fused prologue's inputs: ops.ttt_block.qk_prep's tensors (its base_lr and lr_col come last in an op's schema).
QK_NAMES = ("p", "ring", "conv_pos", "wq", "bq", "wk", "bk", "rope_cos", "rope_sin", "rot_pos", "lr_bias", "token_idx")
QK_PARAMS = [f"Tensor{'?' if n in ('bq', 'bk') else ''} {n}" for n in QK_NAMES]


def check_ring(name, ring, conv_pos, weight, bias, B, D) -> None:
    """A conv ring [B, W, D] with its tap-major weights [W, D], bias [D] or None and slot conv_pos."""
    W = ring.shape[1] if ring.dim() == 3 else -1
    assert ring.dim() == 3 and tuple(ring.shape) == (B, W, D) and ring.is_contiguous(), \
        f"{name}: ring must be contiguous [{B}, W, {D}], got {tuple(ring.shape)}"
    assert tuple(weight.shape) == (W, D) and weight.is_contiguous(), \
        f"{name}: conv weights must be tap-major and contiguous [W, D] (the parameter [D, W] transposed)"
    assert bias is None or (tuple(bias.shape) == (D,) and bias.is_contiguous()), f"{name}: conv bias must be [D]"
    assert conv_pos.numel() == 1 and conv_pos.dtype == torch.int64, f"{name}: conv_pos must be a [1] int64 tensor"


def check_qk_inputs(name, p, ring, conv_pos, wq, bq, wk, bk, rope_cos, rope_sin, pos, lr_bias, token_idx,
                    num_heads: int, lr_col: int) -> None:
    """qk_prep's arguments (ops.ttt_block.qk_prep), checked before a launch that reads them."""
    B, D = p.shape[0], ring.shape[2]
    f = D // num_heads
    assert D % num_heads == 0 and f % 2 == 0, f"{name}: width {D} must split into {num_heads} heads of even size"
    assert p.dim() == 2 and p.stride(1) == 1 and p.shape[1] >= lr_col + num_heads, \
        f"{name}: p must be [B, >= {lr_col + num_heads}] with contiguous rows, got {tuple(p.shape)}"
    for w, b in ((wq, bq), (wk, bk)):  # both convs over the one ring
        check_ring(name, ring, conv_pos, w, b, B, D)
    assert (bq is None) == (bk is None), f"{name}: both convs or neither have a bias"
    assert rope_cos.is_contiguous() and rope_sin.is_contiguous() and rope_cos.shape[1] == f // 2, \
        f"{name}: rotary tables must be contiguous [b, {f // 2}]"
    assert lr_bias.is_contiguous() and token_idx.is_contiguous() and pos.numel() == 1 and pos.dtype == torch.int64


def qk_kernel_args(qk: dict | None, dummy: torch.Tensor, head_dim: int) -> tuple[list, dict]:
    """The fused prologue's kernel arguments (p_ptr .. tok_ptr, stride_p, lr_col, eta_scale, dim) and
    constexprs (FUSED_QK, HAS_QK_BIAS, WIDTH) for qk, a dict of QK_NAMES, base_lr and lr_col; qk None:
    placeholders (dummy for every pointer) and FUSED_QK False."""
    if qk is None:
        return [dummy] * len(QK_NAMES) + [0, 0, 0.0, 0], {"FUSED_QK": False, "HAS_QK_BIAS": False, "WIDTH": 1}
    ptrs = [qk[n] if qk[n] is not None else qk["wq"] for n in QK_NAMES]
    _, width, dim = qk["ring"].shape
    scalars = [qk["p"].stride(0), qk["lr_col"], qk["base_lr"] / head_dim, dim]
    return ptrs + scalars, {"FUSED_QK": True, "HAS_QK_BIAS": qk["bq"] is not None, "WIDTH": width}


# The fused post-norm's inputs (GateNorm): in an op's schema after the state tensors, its g_col and eps last.
GN_PARAMS = ["Tensor norm_w", "Tensor norm_b", "Tensor counters"]


def gn_kernel_args(gn: dict | None, dummy: torch.Tensor, dim: int) -> tuple[list, dict]:
    """The fused post-norm's kernel arguments (y_ptr, nw_ptr, nb_ptr, cnt_ptr, g_col, gn_eps) and constexprs
    (GATE_NORM, HAS_GATE, BLOCK_ROW) for gn, a dict of y, norm_w, norm_b, counters, g_col (-1: no gate) and
    eps; gn None: placeholders and GATE_NORM False."""
    if gn is None:
        return [dummy] * 4 + [0, 0.0], {"GATE_NORM": False, "HAS_GATE": False, "BLOCK_ROW": 16}
    return ([gn["y"], gn["norm_w"], gn["norm_b"], gn["counters"], max(gn["g_col"], 0), gn["eps"]],
            {"GATE_NORM": True, "HAS_GATE": gn["g_col"] >= 0, "BLOCK_ROW": pow2(dim)})


def qk_step_op(name: str, state: tuple[str, ...], mutates: tuple[str, ...], launch):
    """A dual decode-step op with qk_prep folded into the kernel's prologue: QK_PARAMS, then gamma, beta,
    pos and the state and cache tensors (state), then base_lr, lr_col, v_col; returns out [B, H, f]
    (H, f: gamma's shape). v is p's columns v_col .. v_col + H f, viewed here: a view of p made in the
    compiled graph before the op lets inductor pad p's rows (its comprehensive padding) and then copy
    p and the views into the strides the op was traced with, 3 copies a layer (exp/NOTES.md, session 8).
    Mutates the ring (q0 into slot conv_pos) and `mutates`. launch as for step_op, with qk=.

    Also registers `name`_gn, the same step followed in the kernel by ops.ttt_block.gate_norm over each
    sequence's heads (finish_row): GN_PARAMS after the state tensors, g_col (-1: no gate) and the norm's eps
    last; returns y [B, H f], o_proj's input (the step's output rows go to a scratch the kernel reads back).
    Mutates the counters too (each is back to 0 when the kernel ends)."""
    n = len(QK_NAMES)

    def unpack(args, tail: int):
        qk = dict(zip(QK_NAMES, args[:n]), base_lr=args[-tail], lr_col=args[1 - tail])
        p, v_col = qk["p"], args[2 - tail]
        gamma = args[n]
        H, f = gamma.shape
        v = p[:, v_col:v_col + H * f].view(p.shape[0], H, f)
        return qk, v, args[n:n + 3 + len(state)]

    def impl(*args):
        qk, v, (gamma, beta, pos, *tensors) = unpack(args, 3)
        out = torch.empty(v.shape, dtype=v.dtype, device=v.device)
        return launch(None, None, v, None, None, gamma, beta, pos, *tensors, out, qk=qk)

    def impl_gn(*args):
        qk, v, (gamma, beta, pos, *tensors) = unpack(args, 5)
        norm_w, norm_b, counters = args[n + 3 + len(state):n + 6 + len(state)]
        out = torch.empty(v.shape, dtype=v.dtype, device=v.device)
        y = torch.empty((v.shape[0], v.shape[1] * v.shape[2]), dtype=v.dtype, device=v.device)
        gn = dict(y=y, norm_w=norm_w, norm_b=norm_b, counters=counters, g_col=args[-2], eps=args[-1])
        launch(None, None, v, None, None, gamma, beta, pos, *tensors, out, qk=qk, gn=gn)
        return y

    def fake(*args):
        p, gamma = args[0], args[n]
        return torch.empty((p.shape[0], *gamma.shape), dtype=p.dtype, device=p.device)

    def fake_gn(*args):
        p, gamma = args[0], args[n]
        return torch.empty((p.shape[0], gamma.numel()), dtype=p.dtype, device=p.device)

    tensors = [f"Tensor {t}" for t in ("gamma", "beta", "pos", *state)]
    params = QK_PARAMS + tensors + ["float base_lr", "int lr_col", "int v_col"]
    kernel_op(name + "_gn", QK_PARAMS + tensors + GN_PARAMS + ["float base_lr", "int lr_col", "int v_col",
                                                               "int g_col", "float norm_eps"],
              ("ring", *mutates, "counters"), impl_gn, fake_gn)
    return kernel_op(name, params, ("ring", *mutates), impl, fake)


def check_qk_step_inputs(name, p, ring, conv_pos, wq, bq, wk, bk, rope_cos, rope_sin, rot_pos, lr_bias, token_idx,
                         num_heads, lr_col, v_col, gamma, beta, state, cache, mlp: bool) -> None:
    """Everything a fused-prologue dual step needs: qk_prep's checks, then the step's (v, p's columns
    v_col .., stands in for q and k, which the kernel computes, and views of the right shapes for eta
    and c)."""
    check_qk_inputs(name, p, ring, conv_pos, wq, bq, wk, bk, rope_cos, rope_sin, rot_pos, lr_bias, token_idx,
                    num_heads, lr_col)
    D = ring.shape[2]
    if not (0 <= v_col and v_col + D <= p.shape[1]):
        raise UserError(f"{name}: v's columns {v_col}..{v_col + D} are not inside p [{p.shape[0]}, {p.shape[1]}]")
    v = p[:, v_col:v_col + D].view(p.shape[0], num_heads, D // num_heads)
    check_kernel_inputs(name, v, v, v, v[..., 0], token_idx, gamma, beta, state, cache, mlp=mlp, dual=True)


def run_qk_step(name: str, op, op_gn, qk: tuple, tensors: tuple, base_lr: float, lr_col: int, v_col: int,
                gamma, cache, advance: bool, gate_norm) -> torch.Tensor:
    """The body of a `decode_step_dual_qk` after its checks: op (a qk_step_op) on qk_prep's arguments qk and the
    step's tensors (gamma, beta, pos, state, cache), or with gate_norm (a GateNorm, checked here) its _gn twin;
    then pos advanced if advance. -> out [B, H, f], or o_proj's input [B, H f] with gate_norm."""
    if gate_norm is None:
        out = op(*qk, *tensors, base_lr, lr_col, v_col)
    else:
        gn = gate_norm
        gn.check(name, qk[0], gamma.numel())
        out = op_gn(*qk, *tensors, gn.weight, gn.bias, gn.counters, base_lr, lr_col, v_col, gn.g_col, gn.eps)
    if advance:
        advance_pos(cache.pos, cache.mini_batch_size)
    return out


def advance_pos(pos: torch.Tensor, mini_batch_size: int) -> None:
    """pos <- (pos + 1) mod b on the device (no host sync)."""
    pos.copy_((pos + 1) % mini_batch_size)


def launch_options(cfg: dict) -> dict:
    """The Triton launch options of a configuration dict (num_warps, and maxnreg when set)."""
    return {k: cfg[k] for k in ("num_warps", "maxnreg") if cfg.get(k)}


def pow2(n: int) -> int:
    return triton.next_power_of_2(n)
