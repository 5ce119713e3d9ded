"""Triton kernels of the tiled softmax engine, and their launch wrappers.

The engine computes, for anchor rows ``q`` (N×D) against candidate rows ``k`` (M×D),

    S_ij   = scale · r_i r_j ⟨q_i, k_j⟩                 (r = inverse row norms, or 1)
    lse_i  = log( [exp(extra_i)] + Σ_{j valid} exp S_ij )  (row log-sum-exp)
    pos_i  = Σ_{j valid, row_key_i == col_key_j} S_ij      (positive-logit sum)
    clse_j = log Σ_{i valid} exp S_ij                      (column log-sum-exp, CLIP)
    xlse_ti = log Σ_{j valid, row_key_i != col_key_j} exp(μ_t·S_ij)
                                        (optional, t < MAX_EXTRA_LSE: over the negatives)

in tiles, never holding an N×M tensor, and the backward by recomputing S tile by tile from
the saved log-sum-exps. "valid" excludes out-of-range rows/columns and, with mask_diag, i==j.
The loss-specific parts (targets, weights, reductions) are O(N) torch code in losses/<loss>.py.
"""
from __future__ import annotations

import dataclasses

import torch
import triton
import triton.language as tl

from .launch import capped_splits, launch_as, split_grid, target_arch, target_programs
from .norms import finish_grad
from .tiles import (NUM_STAGES, acc_dtype, dot_tile, dtype_class, interpret_tiles, interpreting,
                    launch_options, load_rows, nan_max, nan_max_reduce, out_buffer, pow2_scale,
                    precision, rows_aligned, split_range, streamed_grad_products, TileConfig,
                    tl_acc, upcast, write_owned_rows)


# --------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------
@triton.jit
def _online_lse(m_i, l_i, s_m, AXIS: tl.constexpr):
    """One tile's step of the running (max, sum of exp) along AXIS of the masked logits
    s_m (-inf where invalid); NaN propagates through both."""
    m_new = nan_max(m_i, nan_max_reduce(s_m, AXIS))
    # A row with no candidate yet keeps m = -inf; shift by 0 so exp() sees no NaN.
    shift = tl.where(m_new == float("-inf"), 0.0, m_new)
    if AXIS == 1:
        p_sum = tl.sum(tl.exp(s_m - shift[:, None]), 1)
    else:
        p_sum = tl.sum(tl.exp(s_m - shift[None, :]), 0)
    return m_new, l_i * tl.exp(m_i - shift) + p_sum


# Row counts, runtime flags and split sizes are not specialized: Triton would otherwise
# compile one binary per value 1 and per divisibility by 16 of each (proof/specialize.py);
# only D and the strides keep their hints, which vectorize the tile loads.
@triton.jit(do_not_specialize=["N", "M", "tiles_per_split", "mask_diag", "xpart_stride"])
def _softmax_fwd_kernel(
        Q, K, RQ, RK, SCALE, ROW_KEY, COL_KEY, XMUL,
        PART_M, PART_L, PART_POS, COL_M, COL_L, PART_XM, PART_XL,
        N, M, D, stride_q, stride_k, tiles_per_split, mask_diag, xpart_stride,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
        ONE_CHUNK: tl.constexpr, NEED_COL: tl.constexpr, N_XLSE: tl.constexpr,
        ACC: tl.constexpr, UPCAST: tl.constexpr, PREC: tl.constexpr):
    """Per-split row partials (max, sum of exp, positive sum), with N_XLSE (≤ 2) the
    partials (max, sum) of each extra log-sum-exp over the row's negatives at μ_t·S
    (PART_X*[t·xpart_stride + s·N + row]), and, with NEED_COL, per-program column partials.

    Grid (row programs, splits): program (p, s) walks row blocks p, p + P, ... and, for
    each, the column tiles of split s, with its row tile on chip (ONE_CHUNK) against each
    streamed column tile. Row partials are PART_*[s, rows]; the column partials of its
    split's columns are COL_*[p, cols] (programs of one split own disjoint rows, splits
    own disjoint columns: no two programs write one element). Merged by _merge_kernel.
    """
    pid = tl.program_id(0)
    n_prog = tl.num_programs(0)
    split = tl.program_id(1)
    scale = tl.load(SCALE).to(ACC)
    if N_XLSE > 0:
        mu0 = tl.load(XMUL).to(ACC)
    if N_XLSE > 1:
        mu1 = tl.load(XMUL + 1).to(ACC)
    cb_lo, n_cb = split_range(split, tiles_per_split, tl.cdiv(M, BLOCK_N))
    part = split.to(tl.int64) * N
    col_base = pid.to(tl.int64) * M
    for rb in range(pid, tl.cdiv(N, BLOCK_M), n_prog):
        offs_m = rb * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
        row_ok = offs_m < N
        rq = tl.load(RQ + offs_m, mask=row_ok, other=0.0).to(ACC)
        rkey = tl.load(ROW_KEY + offs_m, mask=row_ok, other=-1)
        m_i = tl.full([BLOCK_M], float("-inf"), ACC)
        l_i = tl.zeros([BLOCK_M], ACC)
        pos_i = tl.zeros([BLOCK_M], ACC)
        xm0 = tl.full([BLOCK_M], float("-inf"), ACC)
        xl0 = tl.zeros([BLOCK_M], ACC)
        xm1 = tl.full([BLOCK_M], float("-inf"), ACC)
        xl1 = tl.zeros([BLOCK_M], ACC)
        if ONE_CHUNK:
            q_tile = load_rows(Q, offs_m, N, D, stride_q, BLOCK_K, ACC, UPCAST)
        for t in range(0, n_cb):
            offs_n = (cb_lo + t) * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)
            col_ok = offs_n < M
            if ONE_CHUNK:
                k_tile = load_rows(K, offs_n, M, D, stride_k, BLOCK_K, ACC, UPCAST)
                dots = tl.dot(q_tile, tl.trans(k_tile), input_precision=PREC, out_dtype=ACC)
            else:
                dots = dot_tile(Q, K, offs_m, offs_n, N, M, D, stride_q, stride_k,
                                 BLOCK_M, BLOCK_N, BLOCK_K, ACC, UPCAST, PREC)
            rk = tl.load(RK + offs_n, mask=col_ok, other=0.0).to(ACC)
            s = dots * (scale * rq)[:, None] * rk[None, :]
            valid = row_ok[:, None] & col_ok[None, :] & \
                ((mask_diag == 0) | (offs_m[:, None] != offs_n[None, :]))
            ckey = tl.load(COL_KEY + offs_n, mask=col_ok, other=-2)
            match = valid & (rkey[:, None] == ckey[None, :])
            pos_i += tl.sum(tl.where(match, s, 0.0), 1)
            s_m = tl.where(valid, s, float("-inf"))
            m_i, l_i = _online_lse(m_i, l_i, s_m, 1)
            if N_XLSE > 0:
                negative = valid & (rkey[:, None] != ckey[None, :])
                xm0, xl0 = _online_lse(xm0, xl0, tl.where(negative, mu0 * s, float("-inf")), 1)
                if N_XLSE > 1:
                    xm1, xl1 = _online_lse(xm1, xl1,
                                           tl.where(negative, mu1 * s, float("-inf")), 1)
            if NEED_COL:
                # The program's first row block starts the partial: nothing to read back.
                more = col_ok & (rb != pid)
                cm, cl = _online_lse(
                    tl.load(COL_M + col_base + offs_n, mask=more, other=float("-inf")),
                    tl.load(COL_L + col_base + offs_n, mask=more, other=0.0), s_m, 0)
                tl.store(COL_M + col_base + offs_n, cm, mask=col_ok)
                tl.store(COL_L + col_base + offs_n, cl, mask=col_ok)
        tl.store(PART_M + part + offs_m, m_i, mask=row_ok)
        tl.store(PART_L + part + offs_m, l_i, mask=row_ok)
        tl.store(PART_POS + part + offs_m, pos_i, mask=row_ok)
        if N_XLSE > 0:
            tl.store(PART_XM + part + offs_m, xm0, mask=row_ok)
            tl.store(PART_XL + part + offs_m, xl0, mask=row_ok)
        if N_XLSE > 1:
            tl.store(PART_XM + xpart_stride + part + offs_m, xm1, mask=row_ok)
            tl.store(PART_XL + xpart_stride + part + offs_m, xl1, mask=row_ok)


@triton.jit(do_not_specialize=["P", "n", "parts_stride"])
def _merge_kernel(PART_M, PART_L, PART_SUM, EXTRA, LSE, SUM, P, n, parts_stride,
                  BLOCK: tl.constexpr, HAS_SUM: tl.constexpr, HAS_EXTRA: tl.constexpr,
                  ACC: tl.constexpr):
    """lse = log(e^extra + Σ_p l_p e^{m_p}) (and SUM = Σ_p sum_p) over the P partials
    PART_*[p, :n] (row p at p·parts_stride), in a fixed order: deterministic."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < n
    if HAS_EXTRA:
        e = tl.load(EXTRA + offs, mask=ok, other=float("-inf")).to(ACC)
        m = e
    else:
        m = tl.full([BLOCK], float("-inf"), ACC)
    total_sum = tl.zeros([BLOCK], ACC)
    for p in range(0, P):
        m = nan_max(m, tl.load(PART_M + p * parts_stride + offs, mask=ok,
                               other=float("-inf")))
        if HAS_SUM:
            total_sum += tl.load(PART_SUM + p * parts_stride + offs, mask=ok, other=0.0)
    shift = tl.where(m == float("-inf"), 0.0, m)
    total = tl.zeros([BLOCK], ACC)
    if HAS_EXTRA:
        total = tl.where(ok, tl.exp(e - shift), 0.0)
    for p in range(0, P):
        pm = tl.load(PART_M + p * parts_stride + offs, mask=ok, other=float("-inf"))
        total += tl.load(PART_L + p * parts_stride + offs, mask=ok, other=0.0) * \
            tl.exp(pm - shift)
    # total == 0 only where every partial is empty (m = -inf); a NaN total must stay NaN
    # (csrc/tile_math.h finish_lse).
    tl.store(LSE + offs, m + tl.log(tl.where(total == 0, 1.0, total)), mask=ok)
    if HAS_SUM:
        tl.store(SUM + offs, total_sum, mask=ok)


@triton.jit(do_not_specialize=["NA", "NB", "split_rows_da", "split_stride_da",
                             "tiles_per_split", "mask_diag", "da_atomic"])
def _softmax_bwd_kernel(
        A, B, RA, RB, SCALE, ROW_KEY, COL_KEY,
        LSE, G_LSE, G_POS, CLSE, G_CLSE, XMUL, XLSE, G_XLSE,
        DA, DB, DSCALE,
        NA, NB, D, stride_a, stride_b, stride_da, stride_db, split_rows_da, split_stride_da,
        tiles_per_split, mask_diag, da_atomic,
        BLOCK_A: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr,
        ONE_CHUNK: tl.constexpr, TRANSPOSED: tl.constexpr, HAS_COL: tl.constexpr,
        N_XLSE: tl.constexpr, NEED_DA: tl.constexpr, NEED_DB: tl.constexpr,
        ACC: tl.constexpr, UPCAST: tl.constexpr, PREC: tl.constexpr):
    """Recompute S for the owned block of A against one split of B; accumulate gradients.

    A is the owned side (rows of S when not TRANSPOSED, columns when TRANSPOSED); grid
    (owned blocks, splits of B), each program starting at a different tile of its split so
    that concurrent atomics hit different rows.
      DA[a] += Σ_b dS_ab r_b B[b]  (NEED_DA: on chip, written once per program: a plain
                                     store into this split's slice DA + split·split_stride_da,
                                     or one atomic add per element with da_atomic)
      DB[b] += Σ_a dS_ab r_a A[a]  (NEED_DB: atomics, per tile)
      DSCALE[split, a] = Σ_b dS_ab cos_ab  (per-split partials of the scale's gradient)
    with dS_ij = g_i P_ij + gpos_i [key_i==key_j] + gc_j Pc_ij
                 + Σ_{t<N_XLSE} μ_t gx_ti e^{μ_t S_ij − xlse_ti} [key_i!=key_j] on valid pairs
    (XLSE, G_XLSE: (N_XLSE, rows of S), indexed by S's row like LSE).
    The scale and the normalization backward are applied later by _norm_backward_kernel.
    """
    pid = tl.program_id(0)
    split = tl.program_id(1)
    scale = tl.load(SCALE).to(ACC)
    if N_XLSE > 0:
        mu0 = tl.load(XMUL).to(ACC)
    if N_XLSE > 1:
        mu1 = tl.load(XMUL + 1).to(ACC)
    n_rows = NB if TRANSPOSED else NA  # rows of S: the stride of XLSE and G_XLSE
    bb_lo, n_bb = split_range(split, tiles_per_split, tl.cdiv(NB, BLOCK_B))
    # Staggered start: programs of one split begin at different tiles of it.
    first = pid % tl.maximum(n_bb, 1)
    offs_a = pid.to(tl.int64) * BLOCK_A + tl.arange(0, BLOCK_A)
    a_ok = offs_a < NA
    ra = tl.load(RA + offs_a, mask=a_ok, other=0.0).to(ACC)
    # This split's slice of DA, given twice (split_rows_da rows = split_stride_da
    # elements). Half inputs with the owned rows on chip take rows × the divisibility-
    # hinted row stride, which keeps DA's 16-byte alignment known to the compiler: from the
    # unhinted element count the 128-row backward's one gradient write spilled 680 B. The
    # rest take the unhinted count: hinted, 9 fp32 variants spilled 8 B.
    if ONE_CHUNK and A.dtype.element_ty != tl.float32 and A.dtype.element_ty != tl.float64:
        DA = DA + split.to(tl.int64) * split_rows_da * stride_da
    else:
        DA = DA + split.to(tl.int64) * split_stride_da
    dscale = tl.zeros([BLOCK_A], ACC)
    if ONE_CHUNK:
        a_tile = load_rows(A, offs_a, NA, D, stride_a, BLOCK_K, ACC, UPCAST)
        da_acc = tl.zeros([BLOCK_A, BLOCK_K], ACC)
    # Row statistics live on the side that indexes the rows of S.
    if not TRANSPOSED:
        lse = tl.load(LSE + offs_a, mask=a_ok, other=0.0)[:, None]
        g = tl.load(G_LSE + offs_a, mask=a_ok, other=0.0)[:, None]
        gp = tl.load(G_POS + offs_a, mask=a_ok, other=0.0)[:, None]
        rkey = tl.load(ROW_KEY + offs_a, mask=a_ok, other=-1)[:, None]
        if N_XLSE > 0:
            xlse0 = tl.load(XLSE + offs_a, mask=a_ok, other=0.0)[:, None]
            gx0 = tl.load(G_XLSE + offs_a, mask=a_ok, other=0.0)[:, None]
        if N_XLSE > 1:
            xlse1 = tl.load(XLSE + n_rows + offs_a, mask=a_ok, other=0.0)[:, None]
            gx1 = tl.load(G_XLSE + n_rows + offs_a, mask=a_ok, other=0.0)[:, None]
    elif HAS_COL:
        # The column statistics (CLIP) of the owned columns. A compile-time flag: as a
        # runtime one its registers made the 128-row sm_90 tiles spill.
        clse = tl.load(CLSE + offs_a, mask=a_ok, other=0.0)[:, None]
        gc = tl.load(G_CLSE + offs_a, mask=a_ok, other=0.0)[:, None]
    if TRANSPOSED:
        ckey = tl.load(COL_KEY + offs_a, mask=a_ok, other=-2)[:, None]
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
        # S is rounded exactly as the forward rounded it (same factors, same grouping), so
        # P = exp(S - lse) sums to 1 over each row as the forward's lse implies.
        if TRANSPOSED:
            s = dots * (scale * rb)[None, :] * ra[:, None]
        else:
            s = dots * (scale * ra)[:, None] * rb[None, :]
        cos = dots * ra[:, None] * rb[None, :]
        valid = a_ok[:, None] & b_ok[None, :] & \
            ((mask_diag == 0) | (offs_a[:, None] != offs_b[None, :]))
        if TRANSPOSED:
            lse = tl.load(LSE + offs_b, mask=b_ok, other=0.0)[None, :]
            g = tl.load(G_LSE + offs_b, mask=b_ok, other=0.0)[None, :]
            gp = tl.load(G_POS + offs_b, mask=b_ok, other=0.0)[None, :]
            rkey = tl.load(ROW_KEY + offs_b, mask=b_ok, other=-1)[None, :]
            if N_XLSE > 0:
                xlse0 = tl.load(XLSE + offs_b, mask=b_ok, other=0.0)[None, :]
                gx0 = tl.load(G_XLSE + offs_b, mask=b_ok, other=0.0)[None, :]
            if N_XLSE > 1:
                xlse1 = tl.load(XLSE + n_rows + offs_b, mask=b_ok, other=0.0)[None, :]
                gx1 = tl.load(G_XLSE + n_rows + offs_b, mask=b_ok, other=0.0)[None, :]
        else:
            ckey = tl.load(COL_KEY + offs_b, mask=b_ok, other=-2)[None, :]
        ds = g * tl.exp(s - lse) + tl.where(rkey == ckey, gp, 0.0)
        if HAS_COL:
            if not TRANSPOSED:
                clse = tl.load(CLSE + offs_b, mask=b_ok, other=0.0)[None, :]
                gc = tl.load(G_CLSE + offs_b, mask=b_ok, other=0.0)[None, :]
            ds += gc * tl.exp(s - clse)
        if N_XLSE > 0:
            xds = (mu0 * gx0) * tl.exp(mu0 * s - xlse0)
            if N_XLSE > 1:
                xds += (mu1 * gx1) * tl.exp(mu1 * s - xlse1)
            # Positives are not in these sums: where(), since their exp may overflow.
            ds += tl.where(rkey == ckey, 0.0, xds)
        ds = tl.where(valid, ds, 0.0)
        dscale += tl.sum(ds * cos, 1)
        ds_b = ds * rb[None, :]
        ds_a = ds * ra[:, None]
        if ONE_CHUNK:
            if NEED_DA:
                da_acc = tl.dot(ds_b.to(b_tile.dtype), b_tile, da_acc,
                                input_precision=PREC, out_dtype=ACC)
            if NEED_DB:
                db_part = tl.dot(tl.trans(ds_a.to(a_tile.dtype)), a_tile,
                                 input_precision=PREC, out_dtype=ACC)
                offs_d = tl.arange(0, BLOCK_K)
                tl.atomic_add(DB + offs_b[:, None] * stride_db + offs_d[None, :], db_part,
                              mask=b_ok[:, None] & (offs_d[None, :] < D), sem="relaxed")
        else:
            streamed_grad_products(A, B, DA, DB, offs_a, offs_b, a_ok, b_ok, ds_a, ds_b,
                                   1.0, D, stride_a, stride_b, stride_da, stride_db,
                                   da_atomic, NEED_DA, NEED_DB, False, BLOCK_K, ACC, UPCAST,
                                   PREC)
    if ONE_CHUNK and NEED_DA:
        write_owned_rows(DA, da_acc, offs_a, a_ok, D, stride_da, da_atomic, BLOCK_K)
    tl.store(DSCALE + split.to(tl.int64) * NA + offs_a, dscale, mask=a_ok)


# --------------------------------------------------------------------------------------
# Launch configuration (chosen here, in Python, never inside the kernels)
# --------------------------------------------------------------------------------------
# Tiles per input dtype and feature-width class, as (max D of the class, forward tiles,
# backward tiles); a tile is (BLOCK_M, BLOCK_N, BLOCK_K or None for one register tile of
# next_pow2(D), num_warps[, num_stages]). Chosen by benchmarks/tile_search.py: for each
# class the largest tiles whose every launchable variant (all flag sets, precisions and
# backward passes) compiles for sm_80 and sm_90 without spilling. The backward holds more
# live tiles (S, dS, two accumulators), hence its smaller blocks; fp32 in IEEE mode is an
# FMA dot (no tensor cores) and the most register-hungry, so fp32 streams D in chunks above
# 64. Above the last one-tile class D is streamed in BLOCK_K chunks. fp64 has no NaN-
# propagating max instruction: its running maxima are max.f64 plus a NaN test and select,
# which cost the one-tile fp64 forwards their 32×32 tiles (they spilled; now 32×16). Once
# the AOT proof compiled with the launcher's own specialization, 11 fp32/fp64 binaries of
# sm_90 spilled 8-16 bytes; re-searched per class (benchmarks/tile_search.py), the D ≤ 16
# fp32 and D ≤ 32 fp64 tiles and the streamed fp64 backward's stage count changed. The
# streamed fp32 backward keeps 16×16×16: every searched alternative (2/4 warps, 1/2 stages,
# 16/32-wide tiles and chunks) spilled 8 cold bytes at ptxas's default register heuristic;
# it is compiled with the MAXNREG cap instead (_CAPPED_TILES), which removes them. Not
# tuned by timing: that needs a GPU.
_TILE_TABLE_SM90 = {
    "half": ((16, (128, 64, None, 8), (32, 32, None, 4)),
             (32, (128, 64, None, 8), (64, 32, None, 8)),
             (64, (128, 64, None, 8), (64, 32, None, 8)),
             (128, (64, 64, None, 4), (32, 32, None, 8)),
             (None, (128, 64, 32, 8), (64, 64, 32, 8))),
    "fp32": ((16, (64, 32, None, 4), (32, 32, None, 4)),
             (32, (32, 32, None, 8), (32, 32, None, 4)),
             (64, (16, 32, None, 8), (16, 16, None, 4)),
             (None, (32, 32, 64, 4), (16, 16, 16, 4, 1))),
    "fp64": ((16, (32, 16, None, 8), (32, 32, None, 8)),
             (32, (32, 16, None, 4), (32, 16, None, 8)),
             (None, (32, 32, 32, 8), (32, 32, 32, 8, 1))),
}

# When every row address is 16-byte aligned (D a multiple of 16 and aligned data) Triton
# compiles with divisibility hints (proof/specialize.py) and the owned rows stay on chip up
# to D = 256 for half inputs: the forward reads each streamed tile once per 128 owned rows
# (on sm_90 wgmma reads the owned tile from shared memory). The backward's owned fp32
# gradient rows are the limit. With the hints (which vectorize loads and cost registers)
# on sm_90: 128 rows × 256 fit against 16-wide streamed tiles with one pipeline stage
# for bf16 (241-255 registers; 32-wide tiles spill 8-40 bytes in 5 of 10 variants), which
# halves the streamed side's reads and gradient atomics per FLOP against 64 rows; fp16's
# two-sided backward spills 8 bytes there, so fp16 keeps 64 × 16 (bf16 looks up its own
# aligned rows instead of the "half" ones); 64 × 128 fit against 32-wide tiles (128 × 128
# spill). On sm_80 mma.sync
# holds both operands in registers: the 128×64 forward fits at D = 256, no on-chip
# backward does (64×16: 4 of 10 variants spill), so its backward streams D.
_ALIGNED_HALF_SM90 = ((64, (128, 64, None, 8), (64, 32, None, 8)),
                      (128, (128, 64, None, 8), (64, 32, None, 8)),
                      (256, (128, 64, None, 8), (64, 16, None, 8, 1)))
_ALIGNED_TILES = {
    90: {"half": _ALIGNED_HALF_SM90,
         "bf16": _ALIGNED_HALF_SM90[:-1] + ((256, (128, 64, None, 8), (128, 16, None, 8, 1)),)},
    80: {"half": _TILE_TABLE_SM90["half"][:-1] +
         ((256, (128, 64, None, 8), _TILE_TABLE_SM90["half"][-1][2]),)},
}
_TILE_TABLES = {90: _TILE_TABLE_SM90, 80: _TILE_TABLE_SM90}


def _table_tiles(table, D: int, dtype: torch.dtype, aligned_table=None
                 ) -> tuple[TileConfig, TileConfig]:
    """(forward, backward) tiles for width D and dtype: the first class of the aligned
    table (when given) or else of the general table that holds next_pow2(D)."""
    d_pow2 = max(16, triton.next_power_of_2(D))
    aligned_table = aligned_table or {}
    aligned_rows = aligned_table.get(dtype_class(dtype), ())
    if dtype == torch.bfloat16:
        aligned_rows = aligned_table.get("bf16", aligned_rows)
    rows = aligned_rows + table[dtype_class(dtype)]
    for max_d, *tiles_ in rows:
        if max_d is None or d_pow2 <= max_d:
            return tuple(TileConfig(t[0], t[1], t[2] or d_pow2, t[2] is None, t[3],
                                    t[4] if len(t) > 4 else NUM_STAGES,
                                    t[5] if len(t) > 5 else 1) for t in tiles_)
    raise AssertionError("the tile table ends with a catch-all class")


def tile_config(D: int, dtype: torch.dtype, interpret: bool | None = None,
                arch: int | None = None, aligned: bool = False
                ) -> tuple[TileConfig, TileConfig]:
    """(forward, backward) tiles for feature width D and input dtype: the launcher's only
    source of tile sizes. ``interpret`` (default: whether the interpreter runs) picks the
    small test tiles unless CONTRASTIVE_KERNELS_LAUNCH_AS names an architecture; ``arch``
    (80 or 90) picks that architecture's table; ``aligned`` (rows 16-byte aligned: D a
    multiple of 16) allows the aligned-only tiles."""
    interpret = interpreting() if interpret is None else interpret
    if arch is None:
        arch = launch_as() if interpret else 90
        if arch is None:
            cfg = interpret_tiles(D)
            return cfg, cfg
    return _table_tiles(_TILE_TABLES[arch], D, dtype,
                        _ALIGNED_TILES[arch] if aligned else None)


# The one smaller owned block a tall tile falls back to (one more compiled variant each).
FIT_BLOCK = 64


def _fit(cfg: TileConfig, n_own: int) -> TileConfig:
    """cfg with 64-row owned blocks where the owned side has at most 64 rows: 64 MoCo
    queries get one 64-row block, not 128 rows half of which are padding."""
    if cfg.block_m > FIT_BLOCK >= n_own:
        return dataclasses.replace(cfg, block_m=FIT_BLOCK)
    return cfg


def _tiles_for(a: torch.Tensor, b: torch.Tensor) -> tuple[TileConfig, TileConfig]:
    """The (forward, backward) tiles of a launch with a (NA, D) owned and b (NB, D)
    streamed: the device architecture's table (or the interpreter's test tiles), fitted
    to the problem's height."""
    arch = target_arch(a.device)
    if arch is None:
        cfg = interpret_tiles(a.shape[1])
        return cfg, cfg
    fwd, bwd = tile_config(a.shape[1], a.dtype, arch=arch, aligned=rows_aligned(a, b))
    if arch != 90:  # the fitted 64-row tiles at 8 warps spill on sm_80
        return fwd, bwd
    return _fit(fwd, a.shape[0]), _fit(bwd, a.shape[0])


# Launches with extra log-sum-exps (N_XLSE > 0) add running sums (forward) and dS terms
# (backward) to kernels whose table tiles sit at the edge of the register file: at those
# tiles 18 of the 1,204 extra-statistic binaries spilled 8-24 B. Per (arch, pass, dtype
# class, BLOCK_M, BLOCK_N, BLOCK_K[, extras]) of the table, what their launches do
# instead, chosen from full AOT compiles of every flag set (tests/test_aot.py checks the
# result): "halve" the owned rows, "cap" registers at MAXNREG, or both. Halving
# everywhere, or capping everywhere, spilled 16 and 22 other binaries: ptxas's
# heuristics differ per class.
_EXTRA_LSE_TILES = {
    (80, "fwd", "half", 128, 64, 256): "halve",
    (80, "fwd", "fp32", 64, 32, 16): "cap",
    (80, "fwd", "fp64", 32, 16, 16): "cap",
    (90, "fwd", "fp32", 32, 32, 64, 2): "halve",  # one extra: the table's tiles
    (80, "bwd", "half", 64, 64, 32): "cap",
    (90, "bwd", "half", 64, 64, 32): "halve+cap",
    (90, "bwd", "half", 128, 16, 256): "halve",
    (90, "bwd", "fp32", 32, 32, 32): "halve",
}


# Classes compiled with the MAXNREG cap on every launch: the streamed fp32 backward on
# sm_90 kept a cold 8 B spill in 4 binaries at its default register heuristic (every other
# tile, warp and stage count spilled too); capped, all 80 of its binaries (with and
# without extra log-sum-exps) compile without local memory.
_CAPPED_TILES = {(90, "bwd", "fp32", 16, 16, 16)}


def _launch_tiles(cfg: TileConfig, n_extra: int, device, dtype, pass_: str
                  ) -> tuple[TileConfig, bool]:
    """(tiles, cap_registers) of a launch of ``pass_`` ("fwd" or "bwd") computing n_extra
    (≥ 0) extra log-sum-exps: the table's tiles, capped for _CAPPED_TILES, changed for
    extra statistics by _EXTRA_LSE_TILES."""
    key = (target_arch(device), pass_, dtype_class(dtype), cfg.block_m, cfg.block_n,
           cfg.block_k)
    if key in _CAPPED_TILES:
        return cfg, True
    if not n_extra:
        return cfg, False
    action = _EXTRA_LSE_TILES.get(key + (n_extra,), _EXTRA_LSE_TILES.get(key, ""))
    if "halve" in action:
        cfg = dataclasses.replace(cfg, block_m=cfg.block_m // 2)
    return cfg, "cap" in action


def _merge(part_m, part_l, part_sum, extra, n: int, acc_tl):
    """Merged lse (n,) and, with part_sum, the summed partial (n,) from (P, n) partials."""
    lse = out_buffer((n,), part_m.dtype, part_m.device)
    total = out_buffer((n,), part_m.dtype, part_m.device) if part_sum is not None else lse
    if n:
        block = 128
        _merge_kernel[(triton.cdiv(n, block),)](
            part_m, part_l, part_sum if part_sum is not None else part_l,
            extra if extra is not None else lse, lse, total, part_m.shape[0], n,
            part_m.stride(0), BLOCK=block, HAS_SUM=part_sum is not None,
            HAS_EXTRA=extra is not None, ACC=acc_tl)
    return lse, (total if part_sum is not None else None)


# Extra log-sum-exps one pass computes (the N_XLSE constexpr of both kernels).
MAX_EXTRA_LSE = 2


def forward(q, k, rq, rk, scale, row_key, col_key, extra, mask_diag: bool, need_col: bool,
            xmul=None):
    """Launch the forward.

    q (N,D), k (M,D) contiguous rows; rq (N,), rk (M,) inverse norms; scale 0-dim;
    row_key (N,), col_key (M,) int64; extra (N,) or None; xmul (T,) or None, T ≤
    MAX_EXTRA_LSE multipliers of the extra log-sum-exps over each row's negatives.
    Returns lse (N,), pos (N,), clse (M,) (empty when not need_col) and xlse (T, N)
    ((0, N) without xmul), accumulation dtype.
    """
    n, d = q.shape
    m = k.shape[0]
    acc, acc_tl = acc_dtype(q.dtype), tl_acc(q.dtype)
    n_x = 0 if xmul is None else xmul.shape[0]
    cfg, cap = _launch_tiles(_tiles_for(q, k)[0], n_x, q.device, q.dtype, "fwd")
    n_rb, n_cb = triton.cdiv(n, cfg.block_m), triton.cdiv(m, cfg.block_n)
    splits, per_split = split_grid(n_rb, n_cb, cfg, q.device)
    # Persistent row programs (CLIP): the column partials are [programs, M], so their
    # number stays near one wave, not N / BLOCK_M.
    row_progs = n_rb
    if need_col:
        row_progs = max(1, min(n_rb, triton.cdiv(2 * target_programs(cfg, q.device),
                                                 splits)))
    part_m, part_l, part_pos = (out_buffer((splits, n), acc, q.device) for _ in range(3))
    col_m, col_l = ((out_buffer((row_progs, m), acc, q.device) for _ in range(2))
                    if need_col else (part_m, part_l))
    part_xm, part_xl = ((out_buffer((n_x, splits, n), acc, q.device) for _ in range(2))
                        if n_x else (part_m, part_l))
    if n:
        _softmax_fwd_kernel[(row_progs, splits)](
            q, k, rq, rk, scale, row_key, col_key, xmul if n_x else scale,
            part_m, part_l, part_pos, col_m, col_l, part_xm, part_xl,
            n, m, d, q.stride(0), k.stride(0), per_split, int(mask_diag), splits * n,
            BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k,
            ONE_CHUNK=cfg.one_chunk, NEED_COL=need_col, N_XLSE=n_x, ACC=acc_tl,
            UPCAST=upcast(q.dtype), PREC=precision(q.dtype), **launch_options(cfg, cap))
    lse, pos = _merge(part_m, part_l, part_pos, extra, n, acc_tl)
    xlse = torch.stack([_merge(part_xm[t], part_xl[t], None, None, n, acc_tl)[0]
                        for t in range(n_x)]) if n_x else lse.new_empty((0, n))
    if not need_col:
        return lse, pos, lse.new_empty(0), xlse
    if n == 0:  # no rows: every column's partials are empty
        return lse, pos, torch.full((m,), float("-inf"), dtype=acc, device=q.device), xlse
    clse, _ = _merge(col_m, col_l, None, None, m, acc_tl)
    return lse, pos, clse, xlse


def _atomic_elements(n_own: int, n_other: int, block: int) -> int:
    """Elements the other side's gradient receives by atomics when one side owns blocks
    of ``block`` rows: every owned block adds one row per other-side row."""
    return triton.cdiv(n_own, block) * n_other


# Most elements the deterministic mode's per-split gradient partials may take (256 MiB fp32).
_MAX_PART_ELEMENTS = 1 << 26


def _launch_grad(a, b, ra, rb, scale, row_key, col_key, lse, g_lse, g_pos, clse, g_clse,
                 xmul, xlse, g_xlse, *, transposed, mask_diag, has_col, need_da, need_db,
                 deterministic, db):
    """One backward pass owning the rows of ``a``: returns (dA partials (P, NA, D) or
    None, dscale partials (S, NA)); dB (NB, D) accumulates into ``db`` by atomics."""
    na, d = a.shape
    nb = b.shape[0]
    acc = acc_dtype(a.dtype)
    n_x = 0 if xmul is None else xmul.shape[0]
    cfg, cap = _launch_tiles(_tiles_for(a, b)[1], n_x, a.device, a.dtype, "bwd")
    n_ab, n_bb = triton.cdiv(na, cfg.block_m), triton.cdiv(nb, cfg.block_n)
    splits, per_split = split_grid(n_ab, n_bb, cfg, a.device)
    # Several splits of one row: atomics, or (deterministic) one slice per split summed in
    # a fixed order by the normalization backward. Streamed D read-modify-writes its rows.
    if deterministic and need_da:
        splits, per_split = capped_splits(splits, per_split, n_bb, na * d,
                                          _MAX_PART_ELEMENTS)
    da_atomic = need_da and splits > 1 and not deterministic
    parts = splits if (need_da and not da_atomic) else 1
    da = None
    if need_da:
        shape = (parts, na, d)
        da = (torch.zeros(shape, dtype=acc, device=a.device)
              if (da_atomic or not cfg.one_chunk) else out_buffer(shape, acc, a.device))
    dscale = out_buffer((splits, na), acc, a.device)
    if na:
        da_arg = da if da is not None else dscale
        _softmax_bwd_kernel[(n_ab, splits)](
            a, b, ra, rb, scale, row_key, col_key, lse, g_lse, g_pos, clse, g_clse,
            *((xmul, xlse, g_xlse) if n_x else (scale, lse, g_lse)), da_arg,
            db if db is not None else dscale, dscale,
            na, nb, d, a.stride(0), b.stride(0), d, d,
            *((na, na * d) if parts > 1 else (0, 0)), per_split, int(mask_diag), int(da_atomic),
            BLOCK_A=cfg.block_m, BLOCK_B=cfg.block_n, BLOCK_K=cfg.block_k,
            ONE_CHUNK=cfg.one_chunk, TRANSPOSED=transposed, HAS_COL=has_col, N_XLSE=n_x,
            NEED_DA=need_da, NEED_DB=need_db, ACC=tl_acc(a.dtype), UPCAST=upcast(a.dtype),
            PREC=precision(a.dtype), **launch_options(cfg, cap))
    return da, dscale


def _ds_scale(rq, rk, g_lse, g_pos, g_clse, has_col, xmul=None, g_xlse=None
              ) -> torch.Tensor:
    """σ = 2^e (0-dim, on the device, no synchronization) with σ·|dS_ij·r| ≤ 2^14 for every
    pair and either inverse norm r, from |dS_ij| ≤ |g_i| + |gpos_i| + |gc_j| +
    Σ_t |μ_t·gx_ti| (softmax probabilities are at most 1); 1 where that bound is 0 or not
    finite."""
    bound = g_lse.abs().max() + g_pos.abs().max()
    if has_col:
        bound = bound + g_clse.abs().max()
    if xmul is not None:
        bound = bound + (xmul.abs() * g_xlse.abs().amax(dim=1)).sum()
    return pow2_scale(bound * torch.maximum(rq.abs().max(), rk.abs().max()))


def _row_owned(q, k, need_dq: bool, need_dk: bool) -> bool:
    """Whether the one-pass backward owns blocks of q's rows (dK by atomics) rather than
    of k's (dQ by atomics): whichever sends fewer elements through atomics, counting only
    the gradients that are needed (a frozen queue: own the queries, no atomics at all)."""
    rows = _atomic_elements(q.shape[0], k.shape[0], _tiles_for(q, k)[1].block_m) \
        if need_dk else 0
    cols = _atomic_elements(k.shape[0], q.shape[0], _tiles_for(k, q)[1].block_m) \
        if need_dq else 0
    return rows <= cols


def backward(q, k, rq, rk, scale, row_key, col_key, lse, clse, g_lse, g_pos, g_clse,
             mask_diag: bool, normalize: bool, deterministic: bool,
             need_dq: bool = True, need_dk: bool = True, xmul=None, xlse=None, g_xlse=None):
    """Gradients (dq (N,D), dk (M,D) in the input dtype — (0, D) when not needed —, and
    dscale 0-dim in the accumulation dtype); xmul (T,), xlse and g_xlse (T, N) the extra
    log-sum-exps of the forward and their upstream gradients, or None.

    deterministic=False: one recomputing pass; the side that owns blocks accumulates its
    gradient rows on chip, the other side's by atomics (6·N·M·D backward FLOPs; 4·N·M·D
    when only one of dq/dk is needed).
    deterministic=True: a dQ pass over row blocks and, when dk is needed, a dK pass over
    column blocks, each recomputing S, no atomics: bitwise reproducible.
    """
    n, d = q.shape
    m = k.shape[0]
    acc = acc_dtype(q.dtype)
    has_col = clse.numel() > 0
    sigma = None
    if q.dtype == torch.float16 and n and m:
        # The dS operand of the gradient products is cast to fp16, where entries of order
        # g/N² (a mean over a large batch) would flush to zero. Scaling the upstream
        # gradients by a power of two σ scales dS, dQ̂, dK̂ and dscale by exactly σ; the
        # kernels are unchanged and the results are divided by σ once at the end.
        sigma = _ds_scale(rq, rk, g_lse, g_pos, g_clse, has_col, xmul, g_xlse)
        g_lse, g_pos = g_lse * sigma, g_pos * sigma
        g_clse = g_clse * sigma if has_col else g_clse
        g_xlse = g_xlse * sigma if xmul is not None else None
    g_clse = g_clse if has_col else g_lse
    if xmul is not None:
        xlse, g_xlse = xlse.contiguous(), g_xlse.contiguous()
    stats = (scale, row_key, col_key, lse, g_lse, g_pos, clse, g_clse, xmul, xlse, g_xlse)
    common = dict(mask_diag=mask_diag, has_col=has_col, deterministic=deterministic)
    dq_parts = dk_parts = None
    if deterministic:
        dq_parts, dscale = _launch_grad(q, k, rq, rk, *stats, transposed=False,
                                        need_da=need_dq, need_db=False, db=None, **common)
        if need_dk:
            dk_parts, _ = _launch_grad(k, q, rk, rq, *stats, transposed=True,
                                       need_da=True, need_db=False, db=None, **common)
    elif _row_owned(q, k, need_dq, need_dk):
        dk_acc = torch.zeros((m, d), dtype=acc, device=q.device) if need_dk else None
        dq_parts, dscale = _launch_grad(q, k, rq, rk, *stats, transposed=False,
                                        need_da=need_dq, need_db=need_dk, db=dk_acc,
                                        **common)
        dk_parts = dk_acc[None] if need_dk else None
    else:
        dq_acc = torch.zeros((n, d), dtype=acc, device=q.device) if need_dq else None
        dk_parts, dscale = _launch_grad(k, q, rk, rq, *stats, transposed=True,
                                        need_da=need_dk, need_db=need_dq, db=dq_acc,
                                        **common)
        dq_parts = dq_acc[None] if need_dq else None
    dscale = dscale.sum()
    if sigma is not None:
        dscale = dscale / sigma
    dq = finish_grad(q, rq, dq_parts, scale, normalize, sigma) if need_dq else \
        q.new_empty((0, d))
    dk = finish_grad(k, rk, dk_parts, scale, normalize, sigma) if need_dk else \
        k.new_empty((0, d))
    return dq, dk, dscale
