"""Triton kernels of the pairwise engine (SigLIP, Hadsell) and batch-hard mining.

The interface is documented in engines/pairwise.py; the per-pair rules are those of
csrc/tile_math.h (softplus, sigmoid, siglip_term/grad, gram_sq_dist, near_coincident,
hadsell_term/grad/margin_grad, beats_max/min), written here with the same formulas, the
same NaN behaviour and the same near-coincident constant.

One kernel, ``_pair_kernel``, serves every pass. A program owns a block of rows of A and
walks one split of B's tiles (grid: blocks × splits, sized by launch.split_grid to fill
the GPU; per-split partials of the O(N) outputs are summed in a fixed order, the owned
gradient rows are written once per program), recomputing ⟨a_i, b_j⟩ with a tile product:

- forward (GRAD off): rows_i = Σ_{j valid} term_ij;
- row pass (A = q, B = k): dQ̂ accumulates Σ_j dS_ij k̂_j in registers (or in DA, when D is
  streamed in chunks), plus the row sums Σ_j dS_ij (Hadsell), the per-row partials of
  dscale/dbias/dmargin and, with want_rows, the loss rows; with ATOMIC_B also
  dK̂ += dSᵀ Q̂ and the column sums, by atomics: one pass of 3 tile products;
- column pass (TRANSPOSED, A = k, B = q; the deterministic mode): dK̂ and the column sums
  from the same recomputed tile, so no float atomics anywhere.

dS is the derivative of the row-weighted loss w.r.t. the Gram entry c_ij = ⟨q̂_i, k̂_j⟩
(SigLIP: without the logit scale, applied by the normalization backward; Hadsell:
−2·g_i·hadsell_grad). For Hadsell the diagonal terms −(Σ_j dS_ij)·q̂_i and
−(Σ_i dS_ij)·k̂_j are added after the kernels from the O(N+M) sums (O((N+M)·D) work).

Hadsell distances come from the Gram form; a tile in which some valid pair is
near-coincident (d² ≤ (‖q̂‖² + ‖k̂‖²)/1024) recomputes those pairs from the difference
Σ_d (q̂_id − k̂_jd)², a scalar loop over D that only such tiles pay for (duplicates give
exactly d² = 0, as in the reference).

fp16 gradient operands: the dS tile is cast to fp16 for the two gradient products.
SigLIP has |dS_ij| ≤ |g_i| (σ ≤ 1), so the upstream weights are pre-scaled by one global
power of two (the softmax engine's ``_ds_scale`` rule). Hadsell has no such bound
(|dS| = 2|g|·(margin/d − 1) grows without limit as d → 0 for a negative pair), so each
tile picks its own power of two σ_t from the tile's max |dS·r| (TILE_SCALE) and divides
the fp32 tile product by it: exact scaling, no overflow and no flush of the tile's large
entries, at the cost of one tile-wide max per tile. bf16 has fp32's range: no scaling.
"""
from __future__ import annotations

import dataclasses

import torch
import triton
import triton.language as tl

from .launch import capped_splits, launch_as, split_grid, target_arch
from .norms import finish_grad
from .tiles import (NUM_STAGES, dot_tile, dtype_class, interpret_tiles, interpreting,
                    launch_options, load_rows, out_buffer, pow2_scale, precision, row_block,
                    rows_aligned, split_range, streamed_grad_products, TileConfig,
                    tl_acc, upcast, write_owned_rows)

SIGLIP = 0
HADSELL = 1
# csrc/tile_math.h kCoincident (reference.NEAR_COINCIDENT).
COINCIDENT = tl.constexpr(1.0 / 1024)


# --------------------------------------------------------------------------------------
# Per-pair rules (csrc/tile_math.h)
# --------------------------------------------------------------------------------------
@triton.jit
def _div(a, b):
    """a / b. fp32: the full-range approximate division (2 ulp); the IEEE one compiles to
    a slow-path subroutine CALL whose register saves spill to local memory inside these
    tiles. fp64 keeps the IEEE division (the fp64 path is the exact one)."""
    if a.dtype == tl.float32:
        r = tl.fdiv(a, b)
    else:
        r = a / b
    return r


@triton.jit
def _softplus(v):
    """max(v, 0) + log1p(e^{-|v|}); NaN propagates. log1p(x) = x·log(u)/(u − 1) with
    u = 1 + x (exact to a few ulps; libdevice's log1p has no interpreter path)."""
    a = tl.where(v < 0, -v, v)
    e = tl.exp(-a)
    u = 1.0 + e
    l1p = tl.where(u == 1.0, e, tl.log(u) * _div(e, tl.where(u == 1.0, 1.0, u - 1.0)))
    return tl.where(v < 0, 0.0, v) + l1p


@triton.jit
def _sigmoid(v):
    e = tl.exp(tl.where(v < 0, v, -v))  # e^{-|v|}
    r = _div(tl.full(e.shape, 1.0, e.dtype), 1.0 + e)
    return tl.where(v < 0, e * r, r)


@triton.jit
def _exact_sq_dist(A, B, offs_a, offs_b, a_ok, b_ok, ra, rb, D, stride_a, stride_b,
                   BLOCK_A: tl.constexpr, BLOCK_B: tl.constexpr, ACC: tl.constexpr):
    """Σ_d (ra_i·A[i,d] − rb_j·B[j,d])² for one tile (the near-coincident recompute)."""
    acc = tl.zeros([BLOCK_A, BLOCK_B], ACC)
    for d in range(0, D):
        x = tl.load(A + offs_a * stride_a + d, mask=a_ok, other=0.0).to(ACC) * ra
        y = tl.load(B + offs_b * stride_b + d, mask=b_ok, other=0.0).to(ACC) * rb
        diff = x[:, None] - y[None, :]
        acc += diff * diff
    return acc


@triton.jit
def _sq_dist_tile(A, B, offs_a, offs_b, a_ok, b_ok, ra, rb, nsum, c, check, D,
                  stride_a, stride_b, BLOCK_A: tl.constexpr, BLOCK_B: tl.constexpr,
                  ACC: tl.constexpr):
    """gram_sq_dist, with the pairs flagged by ``check`` that are near_coincident
    recomputed from the difference (only tiles holding such a pair pay for it)."""
    d2 = nsum - 2.0 * c
    d2 = tl.where(d2 < 0, 0.0, d2)
    near = check & (d2 <= nsum * COINCIDENT)
    if tl.max(near.to(tl.int32)) > 0:
        exact = _exact_sq_dist(A, B, offs_a, offs_b, a_ok, b_ok, ra, rb, D, stride_a,
                               stride_b, BLOCK_A, BLOCK_B, ACC)
        d2 = tl.where(near, exact, d2)
    return d2


@triton.jit
def _sqrt(x):
    """sqrt: fp32 the hardware approximation (1 ulp; sqrt_rn compiles to a slow-path
    CALL that spills in these tiles, like the IEEE division); fp64 IEEE."""
    return tl.sqrt(x)


@triton.jit
def _pow2_bits(e):
    """2^e for an integer-valued fp32 e in [-126, 127], built from its bits (exact)."""
    return ((e.to(tl.int32) + 127) << 23).to(tl.float32, bitcast=True)


# --------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------
@triton.jit(do_not_specialize=["N"])
def _sq_norm_kernel(X, R, OUT, N, D, stride_x,
                    BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr, ACC: tl.constexpr):
    """OUT[i] = ‖R[i]·X[i]‖² (the squared norm of the row the tiles see)."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    ok = rows < N
    sq = tl.zeros([BLOCK_R], ACC)
    for d0 in range(0, D, BLOCK_D):
        cols = d0 + tl.arange(0, BLOCK_D)
        x = tl.load(X + rows[:, None] * stride_x + cols[None, :],
                    mask=ok[:, None] & (cols[None, :] < D), other=0.0).to(ACC)
        sq += tl.sum(x * x, 1)
    r = tl.load(R + rows, mask=ok, other=0.0).to(ACC)
    tl.store(OUT + rows, sq * r * r, mask=ok)


@triton.jit
def _pair_tile(dots, ra, rb, ROW_KEY, COL_KEY, G, offs_a, offs_b, a_ok, b_ok, key_a, g,
               mask_diag, GRAD: tl.constexpr, TRANSPOSED: tl.constexpr, ACC: tl.constexpr):
    """(c, match, valid, g) of one tile: the Gram entries c_ij = (dots·rq_i)·rk_j in both
    orientations (so both passes see the same c), which pairs share a key, which pairs
    count, and the row weights (per column of the tile when TRANSPOSED)."""
    if TRANSPOSED:
        c = dots * rb[None, :] * ra[:, None]
        rkey_b = tl.load(ROW_KEY + offs_b, mask=b_ok, other=-1)[None, :]
        match = rkey_b == key_a
        if GRAD:
            g = tl.load(G + offs_b, mask=b_ok, other=0.0).to(ACC)[None, :]
    else:
        c = dots * ra[:, None] * rb[None, :]
        ckey_b = tl.load(COL_KEY + offs_b, mask=b_ok, other=-2)[None, :]
        match = key_a == ckey_b
    valid = a_ok[:, None] & b_ok[None, :]
    valid = valid & ((offs_a[:, None] != offs_b[None, :]) | (mask_diag == 0))
    return c, match, valid, g


@triton.jit
def _siglip_terms(c, match, valid, g, scale, bias, rows_acc, want_rows, GRAD: tl.constexpr):
    """SigLIP's tile: the loss rows (want_rows) and dS (GRAD; c itself otherwise).
    siglip_term(u) = softplus(w), siglip_grad(u) = ∓σ(w), w = (match ? −u : u)."""
    u = scale * c + bias
    w = tl.where(match, -u, u)
    if want_rows != 0:
        rows_acc += tl.sum(tl.where(valid, _softplus(w), 0.0), 1)
    ds = c
    if GRAD:
        sg = _sigmoid(w)
        ds = g * tl.where(match, -sg, sg)
    return rows_acc, ds


@triton.jit
def _hadsell_terms(A, B, SQB, offs_a, offs_b, a_ok, b_ok, ra, rb, sqa, c, match, valid, g,
                   margin, rows_acc, p_margin, want_rows, D, stride_a, stride_b,
                   GRAD: tl.constexpr, TRANSPOSED: tl.constexpr, BLOCK_A: tl.constexpr,
                   BLOCK_B: tl.constexpr, ACC: tl.constexpr):
    """Hadsell's tile: distances (near-coincident pairs recomputed), the loss rows
    (want_rows), dS with respect to c (GRAD; c itself otherwise) and the dmargin partials."""
    sqb = tl.load(SQB + offs_b, mask=b_ok, other=0.0).to(ACC)
    if TRANSPOSED:
        nsum = sqb[None, :] + sqa[:, None]
    else:
        nsum = sqa[:, None] + sqb[None, :]
    d2 = _sq_dist_tile(A, B, offs_a, offs_b, a_ok, b_ok, ra, rb, nsum, c, valid,
                       D, stride_a, stride_b, BLOCK_A, BLOCK_B, ACC)
    dist = _sqrt(d2)
    t = margin - dist
    if want_rows != 0:
        term = tl.where(match, d2, tl.where(t < 0, 0.0, t * t))
        rows_acc += tl.sum(tl.where(valid, term, 0.0), 1)
    ds = c
    if GRAD:
        # dist > 0 rather than d2 > 0: an fp32 sqrt may flush a denormal d2 to 0.
        hg = tl.where((dist > 0) & (t > 0), _div(-t, tl.where(dist > 0, dist, 1.0)),
                      tl.where(d2 != d2, d2, 0.0))
        hg = tl.where(match, 1.0, hg)
        ds = -2.0 * (g * hg)
        if not TRANSPOSED:
            mg = tl.where(match, 0.0, tl.where(t < 0, 0.0, 2.0 * t))
            p_margin += tl.sum(tl.where(valid, g * mg, 0.0), 1)
    return rows_acc, p_margin, ds


@triton.jit
def _row_reductions(ds, c, p_scale, p_bias, own_sum, SUM_B, offs_b, b_ok,
                    KIND: tl.constexpr, TRANSPOSED: tl.constexpr, ATOMIC_B: tl.constexpr):
    """The O(N) reductions of dS: SigLIP's dscale/dbias partials per row; Hadsell's row
    sums (and column sums, by atomics) that the diagonal gradient terms need."""
    if KIND == 0:
        if not TRANSPOSED:
            p_scale += tl.sum(ds * c, 1)
            p_bias += tl.sum(ds, 1)
    else:
        own_sum += tl.sum(ds, 1)
        if ATOMIC_B:
            tl.atomic_add(SUM_B + offs_b, tl.sum(ds, 0), mask=b_ok, sem="relaxed")
    return p_scale, p_bias, own_sum


@triton.jit
def _grad_operands(ds, ra, rb, TILE_SCALE: tl.constexpr):
    """(dS·r_a, dS·r_b, 1/σ_t): the gradient products' dS operands, scaled with TILE_SCALE
    by the tile's own power of two σ_t, σ_t·max|dS·r| ≤ 2^14 (1 where that max is 0 or
    not finite), whose inverse the caller applies to the fp32 products."""
    if TILE_SCALE:
        amax = tl.max(tl.abs(ds)) * tl.maximum(tl.max(ra), tl.max(rb))
        e = tl.floor(tl.log2(16384.0 / amax))
        e = tl.where((e == e) & (e < 1.0e30) & (e > -1.0e30),
                     tl.minimum(tl.maximum(e, -100.0), 100.0), 0.0)
        sig = _pow2_bits(e)
        inv = _pow2_bits(-e)
        ds_b = ds * rb[None, :] * sig
        ds_a = ds * ra[:, None] * sig
    else:
        inv = 1.0
        ds_b = ds * rb[None, :]
        ds_a = ds * ra[:, None]
    return ds_a, ds_b, inv


@triton.jit
def _resident_grad_products(a_tile, b_tile, da_acc, ds_a, ds_b, inv, DB, offs_b, b_ok, D,
                            stride_db, NEED_DA: tl.constexpr, ATOMIC_B: tl.constexpr,
                            TILE_SCALE: tl.constexpr, BLOCK_K: tl.constexpr,
                            ACC: tl.constexpr, PREC: tl.constexpr):
    """D in one register tile: dA accumulates on chip; dB += dSᵀ·A by atomics."""
    if NEED_DA:
        if TILE_SCALE:
            da_acc += tl.dot(ds_b.to(b_tile.dtype), b_tile, input_precision=PREC,
                             out_dtype=ACC) * inv
        else:
            da_acc = tl.dot(ds_b.to(b_tile.dtype), b_tile, da_acc,
                            input_precision=PREC, out_dtype=ACC)
    if ATOMIC_B:
        db_part = tl.dot(tl.trans(ds_a.to(a_tile.dtype)), a_tile,
                         input_precision=PREC, out_dtype=ACC)
        if TILE_SCALE:
            db_part = db_part * inv
        offs_d = tl.arange(0, BLOCK_K)
        tl.atomic_add(DB + offs_b[:, None] * stride_db + offs_d[None, :], db_part,
                      mask=b_ok[:, None] & (offs_d[None, :] < D), sem="relaxed")
    return da_acc


@triton.jit(do_not_specialize=["NA", "NB", "split_rows_da", "split_stride_da",
                             "tiles_per_split", "mask_diag", "want_rows", "da_atomic"])
def _pair_kernel(
        A, B, RA, RB, SQA, SQB, PARAMS, ROW_KEY, COL_KEY, G,
        ROWS, DA, DB, SUM_A, SUM_B, PART,
        NA, NB, D, stride_a, stride_b, stride_da, stride_db, split_rows_da, split_stride_da,
        tiles_per_split, mask_diag, want_rows, da_atomic,
        KIND: tl.constexpr, GRAD: tl.constexpr,
        TRANSPOSED: tl.constexpr, NEED_DA: tl.constexpr, ATOMIC_B: tl.constexpr,
        TILE_SCALE: tl.constexpr,
        BLOCK_A: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr,
        ONE_CHUNK: tl.constexpr, ACC: tl.constexpr, UPCAST: tl.constexpr,
        PREC: tl.constexpr):
    """One block of A against one split of B (see the module docstring for the passes).

    Grid (blocks of A, splits of B); each program starts at a different tile of its split
    so that concurrent atomics hit different rows. ``mask_diag`` (leave out i == j),
    ``want_rows`` (write the loss rows; never with TRANSPOSED) and ``da_atomic`` are
    runtime flags: they change no tile shape, and as compile-time flags they would
    multiply the variants.

    Row-side data (G, ROW_KEY, SQ of q) index A unless TRANSPOSED, then B. Outputs, the
    O(NA) ones per split (slice ``split`` of a (splits, ...) buffer, summed in a fixed
    order by the launcher):
      ROWS[split, a]     loss rows (want_rows; never TRANSPOSED)
      DA[a]              Σ_b dS_ab r_b B[b] (NEED_DA): with D on chip written once per
                         program, a plain store into this split's slice
                         DA + split·split_stride_da, or one atomic add (da_atomic)
      DB[b]             += Σ_a dS_ab r_a A[a]          (ATOMIC_B)
      SUM_A[split, a]    Σ_b dS_ab; SUM_B[b] += Σ_a dS_ab   (Hadsell, GRAD / ATOMIC_B)
      PART[split, 0|1|2, a] per-row dscale, dbias, dmargin partials (GRAD, not TRANSPOSED)

    Per tile: the tile product, the pairs (_pair_tile), the kind's terms
    (_siglip_terms / _hadsell_terms), the reductions of dS (_row_reductions) and the two
    gradient products (_grad_operands, then _resident_ or _streamed_grad_products).
    """
    pid = tl.program_id(0)
    split = tl.program_id(1)
    bb_lo, n_bb = split_range(split, tiles_per_split, tl.cdiv(NB, BLOCK_B))
    first = pid % tl.maximum(n_bb, 1)
    scale = tl.load(PARAMS).to(ACC)
    bias = tl.load(PARAMS + 1).to(ACC)
    margin = tl.load(PARAMS + 2).to(ACC)
    offs_a = pid.to(tl.int64) * BLOCK_A + tl.arange(0, BLOCK_A)
    a_ok = offs_a < NA
    vec = split.to(tl.int64) * NA  # this split's slice of the O(NA) outputs
    # This split's slice of DA, given twice (split_rows_da rows = split_stride_da
    # elements). Half inputs with the owned rows on chip take rows × the divisibility-
    # hinted row stride, which keeps DA's 16-byte alignment known to the compiler: from the
    # unhinted element count the 128-row backward's one gradient write spilled 680 B. The
    # rest take the unhinted count: hinted, 9 fp32 variants spilled 8 B.
    if ONE_CHUNK and A.dtype.element_ty != tl.float32 and A.dtype.element_ty != tl.float64:
        DA = DA + split.to(tl.int64) * split_rows_da * stride_da
    else:
        DA = DA + split.to(tl.int64) * split_stride_da
    ra = tl.load(RA + offs_a, mask=a_ok, other=0.0).to(ACC)
    sqa = ra  # read by Hadsell only
    if KIND == 1:
        sqa = tl.load(SQA + offs_a, mask=a_ok, other=0.0).to(ACC)
    g = ra  # the row weights (GRAD only); per tile when TRANSPOSED (_pair_tile)
    if TRANSPOSED:
        key_a = tl.load(COL_KEY + offs_a, mask=a_ok, other=-2)[:, None]
    else:
        key_a = tl.load(ROW_KEY + offs_a, mask=a_ok, other=-1)[:, None]
        if GRAD:
            g = tl.load(G + offs_a, mask=a_ok, other=0.0).to(ACC)[:, None]
    rows_acc = tl.zeros([BLOCK_A], ACC)
    own_sum = tl.zeros([BLOCK_A], ACC)
    p_scale = tl.zeros([BLOCK_A], ACC)
    p_bias = tl.zeros([BLOCK_A], ACC)
    p_margin = tl.zeros([BLOCK_A], ACC)
    if ONE_CHUNK:
        a_tile = load_rows(A, offs_a, NA, D, stride_a, BLOCK_K, ACC, UPCAST)
        if GRAD:
            da_acc = tl.zeros([BLOCK_A, BLOCK_K], ACC)
    for t in range(0, n_bb):
        bb = bb_lo + (first + t) % n_bb
        offs_b = bb * BLOCK_B + tl.arange(0, BLOCK_B).to(tl.int64)
        b_ok = offs_b < NB
        rb = tl.load(RB + offs_b, mask=b_ok, other=0.0).to(ACC)
        if ONE_CHUNK:
            b_tile = load_rows(B, offs_b, NB, D, stride_b, BLOCK_K, ACC, UPCAST)
            dots = tl.dot(a_tile, tl.trans(b_tile), input_precision=PREC, out_dtype=ACC)
        else:
            dots = dot_tile(A, B, offs_a, offs_b, NA, NB, D, stride_a, stride_b,
                            BLOCK_A, BLOCK_B, BLOCK_K, ACC, UPCAST, PREC)
        c, match, valid, g_tile = _pair_tile(dots, ra, rb, ROW_KEY, COL_KEY, G, offs_a,
                                             offs_b, a_ok, b_ok, key_a, g, mask_diag, GRAD,
                                             TRANSPOSED, ACC)
        if KIND == 0:
            rows_acc, ds = _siglip_terms(c, match, valid, g_tile, scale, bias, rows_acc,
                                         want_rows, GRAD)
        else:
            rows_acc, p_margin, ds = _hadsell_terms(
                A, B, SQB, offs_a, offs_b, a_ok, b_ok, ra, rb, sqa, c, match, valid, g_tile,
                margin, rows_acc, p_margin, want_rows, D, stride_a, stride_b, GRAD,
                TRANSPOSED, BLOCK_A, BLOCK_B, ACC)
        if GRAD:
            ds = tl.where(valid, ds, 0.0)
            p_scale, p_bias, own_sum = _row_reductions(ds, c, p_scale, p_bias, own_sum,
                                                       SUM_B, offs_b, b_ok, KIND,
                                                       TRANSPOSED, ATOMIC_B)
            ds_a, ds_b, inv = _grad_operands(ds, ra, rb, TILE_SCALE)
            if ONE_CHUNK:
                da_acc = _resident_grad_products(a_tile, b_tile, da_acc, ds_a, ds_b, inv,
                                                 DB, offs_b, b_ok, D, stride_db, NEED_DA,
                                                 ATOMIC_B, TILE_SCALE, BLOCK_K, ACC, PREC)
            else:
                streamed_grad_products(A, B, DA, DB, offs_a, offs_b, a_ok, b_ok, ds_a,
                                       ds_b, inv, D, stride_a, stride_b, stride_da,
                                       stride_db, da_atomic, NEED_DA, ATOMIC_B,
                                       TILE_SCALE, BLOCK_K, ACC, UPCAST, PREC)
    if want_rows != 0:
        tl.store(ROWS + vec + offs_a, rows_acc, mask=a_ok)
    if GRAD:
        if ONE_CHUNK and NEED_DA:
            write_owned_rows(DA, da_acc, offs_a, a_ok, D, stride_da, da_atomic, BLOCK_K)
        if KIND == 1:
            tl.store(SUM_A + vec + offs_a, own_sum, mask=a_ok)
        if not TRANSPOSED:
            part = PART + 3 * vec
            tl.store(part + offs_a, p_scale, mask=a_ok)
            tl.store(part + NA + offs_a, p_bias, mask=a_ok)
            tl.store(part + 2 * NA + offs_a, p_margin, mask=a_ok)


@triton.jit(do_not_specialize=["N"])
def _hardest_kernel(X, RX, SQ, KEY, POS, NEG, N, D, stride_x,
                    BLOCK_A: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr,
                    ONE_CHUNK: tl.constexpr, ACC: tl.constexpr, UPCAST: tl.constexpr,
                    PREC: tl.constexpr):
    """Per row i: POS = argmax over {j ≠ i, key_j == key_i} of d²_ij, NEG = argmin over
    {key_j ≠ key_i}; lowest index on ties, NaN beats numbers (beats_max/beats_min), the
    first candidate is always taken, −1 without candidates. One pass over column tiles:
    the tile's best value, the lowest index attaining it, merged with the running best
    by a strict comparison (so earlier tiles win ties)."""
    pid = tl.program_id(0)
    offs_a = pid.to(tl.int64) * BLOCK_A + tl.arange(0, BLOCK_A)
    a_ok = offs_a < N
    ra = tl.load(RX + offs_a, mask=a_ok, other=0.0).to(ACC)
    sqa = tl.load(SQ + offs_a, mask=a_ok, other=0.0).to(ACC)
    key_a = tl.load(KEY + offs_a, mask=a_ok, other=-1)
    best_p = tl.full([BLOCK_A], float("-inf"), ACC)
    best_n = tl.full([BLOCK_A], float("inf"), ACC)
    idx_p = tl.full([BLOCK_A], -1, tl.int64)
    idx_n = tl.full([BLOCK_A], -1, tl.int64)
    if ONE_CHUNK:
        a_tile = load_rows(X, offs_a, N, D, stride_x, BLOCK_K, ACC, UPCAST)
    for bb in range(0, tl.cdiv(N, BLOCK_B)):
        offs_b = bb * BLOCK_B + tl.arange(0, BLOCK_B).to(tl.int64)
        b_ok = offs_b < N
        rb = tl.load(RX + offs_b, mask=b_ok, other=0.0).to(ACC)
        sqb = tl.load(SQ + offs_b, mask=b_ok, other=0.0).to(ACC)
        key_b = tl.load(KEY + offs_b, mask=b_ok, other=-2)
        if ONE_CHUNK:
            b_tile = load_rows(X, offs_b, N, D, stride_x, BLOCK_K, ACC, UPCAST)
            dots = tl.dot(a_tile, tl.trans(b_tile), input_precision=PREC, out_dtype=ACC)
        else:
            dots = dot_tile(X, X, offs_a, offs_b, N, N, D, stride_x, stride_x,
                                BLOCK_A, BLOCK_B, BLOCK_K, ACC, UPCAST, PREC)
        c = dots * ra[:, None] * rb[None, :]
        ok = a_ok[:, None] & b_ok[None, :]
        same = key_a[:, None] == key_b[None, :]
        cand_p = ok & same & (offs_a[:, None] != offs_b[None, :])
        cand_n = ok & (key_a[:, None] != key_b[None, :])
        nsum = sqa[:, None] + sqb[None, :]
        d2 = _sq_dist_tile(X, X, offs_a, offs_b, a_ok, b_ok, ra, rb, nsum, c,
                           cand_p | cand_n, D, stride_x, stride_x, BLOCK_A, BLOCK_B, ACC)
        is_nan = d2 != d2
        cols = offs_b[None, :]
        # Hardest positive: tile max (NaN first), lowest index attaining it, strict merge.
        has = tl.max(cand_p.to(tl.int32), 1) > 0
        nan = tl.max((cand_p & is_nan).to(tl.int32), 1) > 0
        top = tl.max(tl.where(cand_p & (d2 == d2), d2, float("-inf")), 1)
        top = tl.where(nan, float("nan"), top)
        hit = cand_p & ((d2 == top[:, None]) | (is_nan & nan[:, None]))
        j = tl.min(tl.where(hit, cols, N), 1)
        take = has & ((idx_p < 0) | (top > best_p) | ((top != top) & (best_p == best_p)))
        best_p = tl.where(take, top, best_p)
        idx_p = tl.where(take, j, idx_p)
        # Hardest negative: the same with min.
        has = tl.max(cand_n.to(tl.int32), 1) > 0
        nan = tl.max((cand_n & is_nan).to(tl.int32), 1) > 0
        low = tl.min(tl.where(cand_n & (d2 == d2), d2, float("inf")), 1)
        low = tl.where(nan, float("nan"), low)
        hit = cand_n & ((d2 == low[:, None]) | (is_nan & nan[:, None]))
        j = tl.min(tl.where(hit, cols, N), 1)
        take = has & ((idx_n < 0) | (low < best_n) | ((low != low) & (best_n == best_n)))
        best_n = tl.where(take, low, best_n)
        idx_n = tl.where(take, j, idx_n)
    tl.store(POS + offs_a, idx_p, mask=a_ok)
    tl.store(NEG + offs_a, idx_n, mask=a_ok)


@triton.jit(do_not_specialize=["N", "row0", "rows"])
def _strip_kernel(X, SQ, OUT, N, D, stride_x, row0, rows,
                  BLOCK_A: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr,
                  ACC: tl.constexpr, PREC: tl.constexpr):
    """OUT[r, j] = d²(x_{row0+r}, x_j) for r < rows, every j < N: one tile per program
    (grid: row tiles × column tiles), the Gram form with near-coincident pairs recomputed
    from the difference, exactly as the mining kernel sees them."""
    offs_r = tl.program_id(0).to(tl.int64) * BLOCK_A + tl.arange(0, BLOCK_A)
    offs_a = row0 + offs_r
    offs_b = tl.program_id(1).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    r_ok = offs_r < rows
    a_ok = r_ok & (offs_a < N)
    b_ok = offs_b < N
    ones_a = tl.full([BLOCK_A], 1.0, ACC)
    ones_b = tl.full([BLOCK_B], 1.0, ACC)
    c = dot_tile(X, X, offs_a, offs_b, N, N, D, stride_x, stride_x,
                 BLOCK_A, BLOCK_B, BLOCK_K, ACC, False, PREC)
    sqa = tl.load(SQ + offs_a, mask=a_ok, other=0.0).to(ACC)
    sqb = tl.load(SQ + offs_b, mask=b_ok, other=0.0).to(ACC)
    ok = a_ok[:, None] & b_ok[None, :]
    d2 = _sq_dist_tile(X, X, offs_a, offs_b, a_ok, b_ok, ones_a, ones_b,
                       sqa[:, None] + sqb[None, :], c, ok, D, stride_x, stride_x,
                       BLOCK_A, BLOCK_B, ACC)
    tl.store(OUT + offs_r[:, None] * N + offs_b[None, :], d2, mask=ok)


# --------------------------------------------------------------------------------------
# Launch wrappers
# --------------------------------------------------------------------------------------
def _sq_norms(x: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """‖r_i·x_i‖² (N,) in the accumulation dtype."""
    n, d = x.shape
    out = out_buffer((n,), r.dtype, x.device)
    if n == 0:
        return out
    block_r, block_d = row_block(d)
    _sq_norm_kernel[(triton.cdiv(n, block_r),)](
        x, r, out, n, d, x.stride(0), BLOCK_R=block_r, BLOCK_D=block_d,
        ACC=tl_acc(x.dtype))
    return out


# Tiles per dtype class as rows of (max D rounded up to a power of two, or None for the
# rest; forward tiles; backward tiles); a tile is (BLOCK_A, BLOCK_B, BLOCK_K or None for
# the owned rows on chip, warps). The pair epilogue (softplus, sigmoid and a division, or
# the distance, its near-coincident check and the margin terms) keeps several more
# tile-sized values live than the softmax engine's, so the general tiles are small and
# stream D; these are spill-free in every run-time variant the catalogue records
# (proof/aot.py; tests/test_aot.py holds them to it). Untimed: no GPU has been available.
_PAIR_TILES = {
    "half": ((None, (32, 32, 32, 4), (32, 32, 32, 4)),),
    "fp32": ((None, (16, 16, 16, 4), (16, 16, 16, 4)),),
    "fp64": ((None, (16, 16, 16, 4), (16, 16, 16, 4)),),
}
# sm_90, rows 16-byte aligned (divisibility hints), half inputs, D ≤ 256: the owned rows
# stay on chip. The forward reads each streamed tile once per 128 owned rows (wgmma reads
# the owned tile from shared memory); the backward's owned fp32 gradient rows fit 64 rows
# with 32-wide streamed tiles up to D = 128 and 16-wide ones at D = 256 (wider or taller
# tiles spill), so it reads each streamed tile once per 64 rows instead of re-reading
# both operands per D chunk. At D = 256 SigLIP's backward holds 128 rows against 16-wide
# tiles with one pipeline stage (232-248 registers, both half types), halving the
# streamed reads and atomics per FLOP; Hadsell's keeps 64 rows (128 spill 16 bytes in its
# two-sided variant). A backward entry is one tile, or a {kind: tile} mapping. Not for
# fp16 Hadsell, whose per-tile scaling keeps more values live (16 bytes spill at D = 256),
# nor on sm_80, where mma.sync holds both operands in registers and most backward
# variants spill.
_PAIR_ALIGNED = {
    90: {"half": ((128, (128, 64, None, 8), (64, 32, None, 8)),
                  (256, (128, 64, None, 8), {SIGLIP: (128, 16, None, 8, 1),
                                             HADSELL: (64, 16, None, 8)}))},
    80: {},
}
# Batch-hard mining keeps the general tiles (its running arg-max/arg-min is row-only).
_MINING_TILES = {cls: rows[-1][1] for cls, rows in _PAIR_TILES.items()}


def _config(tile, d_pow2: int, kind: int = SIGLIP) -> TileConfig:
    """The TileConfig of a table entry (block_a, block_b, block_k, warps[, stages]), or of
    the kind's entry where the table maps kinds to tiles."""
    if isinstance(tile, dict):
        tile = tile[kind]
    block_a, block_b, block_k, warps, *stages = tile
    return TileConfig(block_a, block_b, block_k or d_pow2, block_k is None, warps,
                      stages[0] if stages else NUM_STAGES)


def tile_config(D: int, dtype: torch.dtype, interpret: bool | None = None,
                arch: int = 90, aligned: bool = False, kind: int = SIGLIP
                ) -> tuple[TileConfig, TileConfig]:
    """(forward, backward) TileConfigs of the pairwise kernels for width D on sm_<arch>
    (``aligned``: every row 16-byte aligned, which allows that arch's aligned rows) and
    loss ``kind`` (SIGLIP or HADSELL)."""
    interpret = interpreting() if interpret is None else interpret
    if interpret and launch_as() is None:
        cfg = interpret_tiles(D)
        return cfg, cfg
    d_pow2 = max(16, triton.next_power_of_2(D))
    cls = dtype_class(dtype)
    rows = (_PAIR_ALIGNED[arch].get(cls, ()) if aligned else ()) + _PAIR_TILES[cls]
    for max_d, fwd, bwd in rows:
        if max_d is None or d_pow2 <= max_d:
            return _config(fwd, d_pow2, kind), _config(bwd, d_pow2, kind)
    raise AssertionError("the pairwise tile table ends with a catch-all class")


def mining_tiles(D: int, dtype: torch.dtype) -> TileConfig:
    """The batch-hard mining kernel's tiles for width D."""
    if interpreting() and launch_as() is None:
        return interpret_tiles(D)
    return _config(_MINING_TILES[dtype_class(dtype)], max(16, triton.next_power_of_2(D)))


def _tiles_for(kind: int, a: torch.Tensor, b: torch.Tensor
               ) -> tuple[TileConfig, TileConfig]:
    """The (forward, backward) tiles of a launch owning a (NA, D) against b (NB, D)."""
    aligned = rows_aligned(a, b) and not tile_scale(kind, a.dtype)
    return tile_config(a.shape[1], a.dtype, arch=target_arch(a.device) or 90,
                       aligned=aligned, kind=kind)


def tile_scale(kind: int, dtype: torch.dtype) -> bool:
    """Per-tile power-of-two scaling of the dS operand: fp16 Hadsell only (see the module
    docstring); SigLIP fp16 uses one global factor, other dtypes need none."""
    return kind == HADSELL and dtype == torch.float16


# Most elements the deterministic mode's per-split gradient partials may take (256 MiB fp32).
_MAX_PART_ELEMENTS = 1 << 26


@dataclasses.dataclass
class _PassOut:
    """What one pass of _pair_kernel leaves: per-split partials of the O(NA) outputs
    ((splits, NA); part (splits, 3, NA)) and the owned gradient partials (P, NA, D)."""
    rows: torch.Tensor | None
    sum_a: torch.Tensor | None
    part: torch.Tensor | None
    da: torch.Tensor | None


def _pair_pass(cfg, kind, a, b, ra, rb, sqa, sqb, params, row_key, col_key, g, *,
               mask_diag, grad, transposed, need_da, atomic_b, want_rows, deterministic,
               db=None, sum_b=None) -> _PassOut:
    """One launch of _pair_kernel owning the rows of a (NA, D) against b (NB, D), on the
    grid (blocks of a, splits of b); db (NB, D) and sum_b (NB,) receive atomics."""
    na, d = a.shape
    nb = b.shape[0]
    acc, dev = ra.dtype, a.device
    n_ab, n_bb = triton.cdiv(na, cfg.block_m), triton.cdiv(nb, cfg.block_n)
    splits, per_split = split_grid(n_ab, n_bb, cfg, dev)
    if deterministic and need_da:
        splits, per_split = capped_splits(splits, per_split, n_bb, na * d,
                                          _MAX_PART_ELEMENTS)
    da_atomic = need_da and splits > 1 and not deterministic
    out = _PassOut(None, None, None, None)
    if need_da:
        shape = (1 if da_atomic else splits, na, d)
        out.da = (torch.zeros(shape, dtype=acc, device=dev)
                  if (da_atomic or not cfg.one_chunk) else out_buffer(shape, acc, dev))
    if want_rows:
        out.rows = out_buffer((splits, na), acc, dev)
    if grad and kind == HADSELL:
        out.sum_a = out_buffer((splits, na), acc, dev)
    if grad and not transposed:
        out.part = out_buffer((splits, 3, na), acc, dev)
    dummy = ra
    _pair_kernel[(n_ab, splits)](
        a, b, ra, rb, sqa, sqb, params, row_key, col_key, g,
        _or(out.rows, dummy), _or(out.da, dummy), _or(db, dummy), _or(out.sum_a, dummy),
        _or(sum_b, dummy), _or(out.part, dummy),
        na, nb, d, a.stride(0), b.stride(0), d, d,
        *((na, na * d) if (need_da and out.da.shape[0] > 1) else (0, 0)), per_split, int(mask_diag),
        int(want_rows), int(da_atomic),
        KIND=kind, GRAD=grad, TRANSPOSED=transposed, NEED_DA=need_da, ATOMIC_B=atomic_b,
        TILE_SCALE=grad and tile_scale(kind, a.dtype),
        BLOCK_A=cfg.block_m, BLOCK_B=cfg.block_n, BLOCK_K=cfg.block_k,
        ONE_CHUNK=cfg.one_chunk, ACC=tl_acc(a.dtype), UPCAST=upcast(a.dtype),
        PREC=precision(a.dtype), **launch_options(cfg, cap_registers=True))
    return out


def _or(x, default):
    return default if x is None else x


def _norms(kind, q, k, rq, rk):
    if kind != HADSELL:
        return rq, rk  # never read
    sq_q = _sq_norms(q, rq)
    return sq_q, (sq_q if k is q and rk is rq else _sq_norms(k, rk))


def pair_forward(kind, q, k, rq, rk, params, row_key, col_key, mask_diag):
    """rows (N,) = Σ_{j valid} term_ij, in the accumulation dtype."""
    n, d = q.shape
    if n == 0:
        return out_buffer((0,), rq.dtype, q.device)
    sq_q, sq_k = _norms(kind, q, k, rq, rk)
    cfg = _tiles_for(kind, q, k)[0]
    out = _pair_pass(cfg, kind, q, k, rq, rk, sq_q, sq_k, params, row_key, col_key, rq,
                     mask_diag=mask_diag, grad=False, transposed=False, need_da=False,
                     atomic_b=False, want_rows=True, deterministic=False)
    return out.rows.sum(0)


def _owned_grad(kind, x, r, out: _PassOut, sum_x, scale, normalize, sigma):
    """dx (N, D) from one side's gradient partials (P, N, D) and, for Hadsell, its dS row
    sums: dx̂ −= (Σ_j dS_ij)·x̂ (the diagonal term), then the normalization backward."""
    parts = out.da
    if kind == HADSELL:
        acc = parts.sum(0) if parts.shape[0] > 1 else parts[0]
        parts = acc.addcmul_(x.to(acc.dtype), (sum_x * r).neg().unsqueeze(1))
    return finish_grad(x, r, parts, scale, normalize, sigma)


def pair_backward(kind, q, k, rq, rk, params, row_key, col_key, g_row, mask_diag,
                  normalize, want_rows, deterministic, need_dq=True, need_dk=True):
    """(rows (N,) or (0,), dq (N, D), dk (M, D) — (0, D) when not needed —, dparams (3,) =
    [dscale, dbias, dmargin]).

    deterministic=False: one pass owning q's rows, 3 tile products (2 when only one of
    dq/dk is needed; dK̂ and the column sums by atomics).
    deterministic=True: a row pass and (when dk is needed) a transposed column pass, each
    recomputing the tile (4 products), no float atomics: bitwise reproducible.
    """
    n, d = q.shape
    m = k.shape[0]
    acc, dev = rq.dtype, q.device
    if not (n and m):
        rows = torch.zeros(n if want_rows else 0, dtype=acc, device=dev)
        zeros = (lambda x, need: torch.zeros((x.shape[0] if need else 0, d), dtype=x.dtype,
                                             device=dev))
        return rows, zeros(q, need_dq), zeros(k, need_dk), torch.zeros(3, dtype=acc,
                                                                        device=dev)
    sigma = None
    if kind == SIGLIP and q.dtype == torch.float16:
        # |dS_ij| ≤ |g_i|: one power of two σ keeps σ·|dS·r| ≤ 2^14 (fp16 operand); the
        # results are divided by σ once (exact).
        sigma = pow2_scale(g_row.abs().max() * torch.maximum(rq.abs().max(), rk.abs().max()))
        g_row = g_row * sigma
    sq_q, sq_k = _norms(kind, q, k, rq, rk)
    cfg = _tiles_for(kind, q, k)[1]
    dk_acc = torch.zeros((1, m, d), dtype=acc, device=dev) if need_dk else None
    sum_k = torch.zeros(m, dtype=acc, device=dev)
    common = dict(mask_diag=mask_diag, grad=True, deterministic=deterministic)
    rows_pass = _pair_pass(cfg, kind, q, k, rq, rk, sq_q, sq_k, params, row_key, col_key,
                           g_row, transposed=False, need_da=need_dq,
                           atomic_b=need_dk and not deterministic, want_rows=want_rows,
                           db=None if dk_acc is None else dk_acc[0], sum_b=sum_k, **common)
    cols_pass = _PassOut(None, None, None, dk_acc)
    if deterministic and need_dk:
        cols_pass = _pair_pass(_tiles_for(kind, k, q)[1], kind, k, q, rk, rq, sq_k, sq_q,
                               params, row_key, col_key, g_row, transposed=True, need_da=True,
                               atomic_b=False, want_rows=False, **common)
        if kind == HADSELL:
            sum_k = cols_pass.sum_a.sum(0)
    part = rows_pass.part.sum(0)
    if sigma is not None:
        part = part / sigma
    # SigLIP: dq̂ = scale·dS·K̂ (the logit scale is the normalization backward's factor);
    # Hadsell: dS already is the Gram-entry gradient.
    scale = params if kind == SIGLIP else params.new_ones(1)
    sum_q = rows_pass.sum_a.sum(0) if kind == HADSELL else None
    dq = (_owned_grad(kind, q, rq, rows_pass, sum_q, scale, normalize, sigma) if need_dq
          else q.new_empty((0, d)))
    dk = (_owned_grad(kind, k, rk, cols_pass, sum_k, scale, normalize, sigma) if need_dk
          else k.new_empty((0, d)))
    rows = rows_pass.rows.sum(0) if want_rows else torch.empty(0, dtype=acc, device=dev)
    return rows, dq, dk, part.sum(1)


def hardest_pairs(x, rx, key):
    """(pos (N,), neg (N,)) int64: per row the farthest same-key row j ≠ i and the nearest
    other-key row (squared Gram distances of r·x, near-coincident pairs recomputed from the
    difference as in the reference), lowest index on ties, -1 where there is none."""
    n, d = x.shape
    # -2 is never an answer: an index the kernel failed to write shows up.
    pos = torch.full((n,), -2, dtype=torch.int64, device=x.device)
    neg = torch.full((n,), -2, dtype=torch.int64, device=x.device)
    if n == 0:
        return pos, neg
    sq = _sq_norms(x, rx)
    cfg = mining_tiles(d, x.dtype)
    _hardest_kernel[(triton.cdiv(n, cfg.block_m),)](
        x, rx, sq, key, pos, neg, n, d, x.stride(0), BLOCK_A=cfg.block_m,
        BLOCK_B=cfg.block_n, BLOCK_K=cfg.block_k, ONE_CHUNK=cfg.one_chunk,
        ACC=tl_acc(x.dtype), UPCAST=upcast(x.dtype), PREC=precision(x.dtype),
        **launch_options(cfg, cap_registers=True))
    return pos, neg



def distance_strip(x, sq, row0: int, rows: int):
    """(rows, N) squared distances of rows [row0, row0 + rows) of x (N, D) to every row,
    in x's dtype (fp32/fp64): x already prepared (normalized, upcast), sq (N,) its squared
    norms; near-coincident pairs recomputed from the difference (duplicates give 0)."""
    n, d = x.shape
    out = out_buffer((rows, n), x.dtype, x.device)
    if rows == 0 or n == 0:
        return out
    cfg = mining_tiles(d, x.dtype)
    grid = (triton.cdiv(rows, cfg.block_m), triton.cdiv(n, cfg.block_n))
    _strip_kernel[grid](x, sq, out, n, d, x.stride(0), row0, rows, BLOCK_A=cfg.block_m,
                        BLOCK_B=cfg.block_n, BLOCK_K=cfg.block_k, ACC=tl_acc(x.dtype),
                        PREC=precision(x.dtype), **launch_options(cfg, cap_registers=True))
    return out
