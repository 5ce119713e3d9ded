"""Triton kernels of the tiled softmax engine, and their launch wrappers.

The engine computes, for anchor rows ``q`` (N×D) against candidate rows ``k`` (M×D),

    S_ij   = scale · r_i r_j ⟨q_i, k_j⟩                 (r = inverse row norms, or 1)
    lse_i  = log( [exp(extra_i)] + Σ_{j valid} exp S_ij )  (row log-sum-exp)
    pos_i  = Σ_{j valid, row_key_i == col_key_j} S_ij      (positive-logit sum)
    clse_j = log Σ_{i valid} exp S_ij                      (column log-sum-exp, CLIP)

in tiles, never holding an N×M tensor, and the backward by recomputing S tile by tile from
the saved log-sum-exps. "valid" excludes out-of-range rows/columns and, with MASK_DIAG, i==j.
The loss-specific parts (targets, weights, reductions) are O(N) torch code in losses/<loss>.py.
"""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from .norms import finish_grad
from .tiles import (NUM_STAGES, TileConfig, acc_dtype, dot_tile, dtype_class,
                    interpret_tiles, interpreting, load_rows, nan_max, nan_max_reduce,
                    out_buffer, pow2_scale, precision, tl_acc, upcast)


# --------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------
@triton.jit
def _softmax_fwd_kernel(
        Q, K, RQ, RK, SCALE, ROW_KEY, COL_KEY, EXTRA,
        LSE, POS, COL_M, COL_L,
        N, M, D, stride_q, stride_k,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
        ONE_CHUNK: tl.constexpr, MASK_DIAG: tl.constexpr, HAS_EXTRA: tl.constexpr,
        NEED_COL: tl.constexpr, ACC: tl.constexpr, UPCAST: tl.constexpr, PREC: tl.constexpr):
    """Row log-sum-exp and positive sums; with NEED_COL, per-program column partials.

    Programs are persistent over row blocks (pid, pid+P, ...) so that the column partial
    statistics COL_M/COL_L are [P, M], not [N/BLOCK_M, M].
    """
    pid = tl.program_id(0)
    n_prog = tl.num_programs(0)
    scale = tl.load(SCALE).to(ACC)
    col_base = pid.to(tl.int64) * M
    for rb in range(pid, tl.cdiv(N, BLOCK_M), n_prog):
        offs_m = rb * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
        row_ok = offs_m < N
        rq = tl.load(RQ + offs_m, mask=row_ok, other=0.0).to(ACC)
        rkey = tl.load(ROW_KEY + offs_m, mask=row_ok, other=-1)
        if HAS_EXTRA:
            m_i = tl.load(EXTRA + offs_m, mask=row_ok, other=float("-inf")).to(ACC)
            l_i = tl.where(row_ok, 1.0, 0.0).to(ACC)
        else:
            m_i = tl.full([BLOCK_M], float("-inf"), ACC)
            l_i = tl.zeros([BLOCK_M], ACC)
        pos_i = tl.zeros([BLOCK_M], ACC)
        if ONE_CHUNK:
            q_tile = load_rows(Q, offs_m, N, D, stride_q, BLOCK_K, ACC, UPCAST)
        for cb in range(0, tl.cdiv(M, BLOCK_N)):
            offs_n = cb * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)
            col_ok = offs_n < M
            if ONE_CHUNK:
                k_tile = load_rows(K, offs_n, M, D, stride_k, BLOCK_K, ACC, UPCAST)
                dots = tl.dot(q_tile, tl.trans(k_tile), input_precision=PREC, out_dtype=ACC)
            else:
                dots = dot_tile(Q, K, offs_m, offs_n, N, M, D, stride_q, stride_k,
                                 BLOCK_M, BLOCK_N, BLOCK_K, ACC, UPCAST, PREC)
            rk = tl.load(RK + offs_n, mask=col_ok, other=0.0).to(ACC)
            s = dots * (scale * rq)[:, None] * rk[None, :]
            valid = row_ok[:, None] & col_ok[None, :]
            if MASK_DIAG:
                valid = valid & (offs_m[:, None] != offs_n[None, :])
            ckey = tl.load(COL_KEY + offs_n, mask=col_ok, other=-2)
            match = valid & (rkey[:, None] == ckey[None, :])
            pos_i += tl.sum(tl.where(match, s, 0.0), 1)
            s_m = tl.where(valid, s, float("-inf"))
            m_new = nan_max(m_i, nan_max_reduce(s_m, 1))
            # A row with no candidate yet keeps m = -inf; shift by 0 so exp() sees no NaN.
            shift = tl.where(m_new == float("-inf"), 0.0, m_new)
            l_i = l_i * tl.exp(m_i - shift) + tl.sum(tl.exp(s_m - shift[:, None]), 1)
            m_i = m_new
            if NEED_COL:
                cm_old = tl.load(COL_M + col_base + offs_n, mask=col_ok, other=float("-inf"))
                cl_old = tl.load(COL_L + col_base + offs_n, mask=col_ok, other=0.0)
                cm_new = nan_max(cm_old, nan_max_reduce(s_m, 0))
                cshift = tl.where(cm_new == float("-inf"), 0.0, cm_new)
                cl_new = cl_old * tl.exp(cm_old - cshift) + \
                    tl.sum(tl.exp(s_m - cshift[None, :]), 0)
                tl.store(COL_M + col_base + offs_n, cm_new, mask=col_ok)
                tl.store(COL_L + col_base + offs_n, cl_new, mask=col_ok)
        # l_i == 0 only for rows without candidates, whose m_i is already -inf; a NaN
        # l_i (a NaN logit, or +inf − +inf) must stay NaN (csrc/tile_math.h finish_lse).
        lse = m_i + tl.log(tl.where(l_i == 0, 1.0, l_i))
        tl.store(LSE + offs_m, lse, mask=row_ok)
        tl.store(POS + offs_m, pos_i, mask=row_ok)


@triton.jit
def _merge_col_kernel(COL_M, COL_L, CLSE, P, M, BLOCK: tl.constexpr, ACC: tl.constexpr):
    """Column log-sum-exp from the P per-program partials (fixed order: deterministic)."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < M
    m = tl.full([BLOCK], float("-inf"), ACC)
    for p in range(0, P):
        m = nan_max(m, tl.load(COL_M + p * M + offs, mask=ok, other=float("-inf")))
    shift = tl.where(m == float("-inf"), 0.0, m)
    total = tl.zeros([BLOCK], ACC)
    for p in range(0, P):
        pm = tl.load(COL_M + p * M + offs, mask=ok, other=float("-inf"))
        total += tl.load(COL_L + p * M + offs, mask=ok, other=0.0) * tl.exp(pm - shift)
    tl.store(CLSE + offs, m + tl.log(tl.where(total == 0, 1.0, total)), mask=ok)


@triton.jit
def _softmax_bwd_kernel(
        A, B, RA, RB, SCALE, ROW_KEY, COL_KEY,
        LSE, G_LSE, G_POS, CLSE, G_CLSE,
        DA, DB, DSCALE,
        NA, NB, D, stride_a, stride_b, stride_da, stride_db,
        BLOCK_A: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr,
        ONE_CHUNK: tl.constexpr, TRANSPOSED: tl.constexpr, MASK_DIAG: tl.constexpr,
        HAS_COL: tl.constexpr, ATOMIC_B: tl.constexpr, WRITE_DSCALE: tl.constexpr,
        ACC: tl.constexpr, UPCAST: tl.constexpr, PREC: tl.constexpr):
    """Recompute S for the owned block of A against all of B and accumulate gradients.

    A is the owned side (rows of S when not TRANSPOSED, columns when TRANSPOSED).
      DA[a] += Σ_b dS_ab r_b B[b]   (owned rows: plain stores, deterministic)
      DB[b] += Σ_a dS_ab r_a A[a]   (only with ATOMIC_B: the one-pass variant)
    with dS_ij = g_i P_ij + gpos_i [key_i==key_j] + gc_j Pc_ij on valid pairs.
    The scale and the normalization backward are applied later by _norm_backward_kernel.
    """
    pid = tl.program_id(0)
    scale = tl.load(SCALE).to(ACC)
    offs_a = pid.to(tl.int64) * BLOCK_A + tl.arange(0, BLOCK_A)
    a_ok = offs_a < NA
    ra = tl.load(RA + offs_a, mask=a_ok, other=0.0).to(ACC)
    dscale = tl.zeros([BLOCK_A], ACC)
    if ONE_CHUNK:
        a_tile = load_rows(A, offs_a, NA, D, stride_a, BLOCK_K, ACC, UPCAST)
        da_acc = tl.zeros([BLOCK_A, BLOCK_K], ACC)
    for bb in range(0, tl.cdiv(NB, BLOCK_B)):
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
        valid = a_ok[:, None] & b_ok[None, :]
        if MASK_DIAG:
            valid = valid & (offs_a[:, None] != offs_b[None, :])
        # Row statistics live on the side that indexes the rows of S.
        if TRANSPOSED:
            lse = tl.load(LSE + offs_b, mask=b_ok, other=0.0)[None, :]
            g = tl.load(G_LSE + offs_b, mask=b_ok, other=0.0)[None, :]
            gp = tl.load(G_POS + offs_b, mask=b_ok, other=0.0)[None, :]
            rkey = tl.load(ROW_KEY + offs_b, mask=b_ok, other=-1)[None, :]
            ckey = tl.load(COL_KEY + offs_a, mask=a_ok, other=-2)[:, None]
        else:
            lse = tl.load(LSE + offs_a, mask=a_ok, other=0.0)[:, None]
            g = tl.load(G_LSE + offs_a, mask=a_ok, other=0.0)[:, None]
            gp = tl.load(G_POS + offs_a, mask=a_ok, other=0.0)[:, None]
            rkey = tl.load(ROW_KEY + offs_a, mask=a_ok, other=-1)[:, None]
            ckey = tl.load(COL_KEY + offs_b, mask=b_ok, other=-2)[None, :]
        ds = g * tl.exp(s - lse) + tl.where(rkey == ckey, gp, 0.0)
        if HAS_COL:
            if TRANSPOSED:
                clse = tl.load(CLSE + offs_a, mask=a_ok, other=0.0)[:, None]
                gc = tl.load(G_CLSE + offs_a, mask=a_ok, other=0.0)[:, None]
            else:
                clse = tl.load(CLSE + offs_b, mask=b_ok, other=0.0)[None, :]
                gc = tl.load(G_CLSE + offs_b, mask=b_ok, other=0.0)[None, :]
            ds += gc * tl.exp(s - clse)
        ds = tl.where(valid, ds, 0.0)
        if WRITE_DSCALE:
            dscale += tl.sum(ds * cos, 1)
        ds_b = ds * rb[None, :]
        if ONE_CHUNK:
            da_acc = tl.dot(ds_b.to(b_tile.dtype), b_tile, da_acc,
                            input_precision=PREC, out_dtype=ACC)
            if ATOMIC_B:
                db_part = tl.dot(tl.trans((ds * ra[:, None]).to(a_tile.dtype)), a_tile,
                                 input_precision=PREC, out_dtype=ACC)
                offs_d = tl.arange(0, BLOCK_K)
                tl.atomic_add(DB + offs_b[:, None] * stride_db + offs_d[None, :], db_part,
                              mask=b_ok[:, None] & (offs_d[None, :] < D), sem="relaxed")
        else:
            # D does not fit one register tile: the owned accumulator rows live in DA
            # (read-modify-write by this program only, so still deterministic).
            for d0 in range(0, D, BLOCK_K):
                offs_d = d0 + tl.arange(0, BLOCK_K)
                d_ok = offs_d[None, :] < D
                b_c = tl.load(B + offs_b[:, None] * stride_b + offs_d[None, :],
                              mask=b_ok[:, None] & d_ok, other=0.0)
                if UPCAST:
                    b_c = b_c.to(ACC)
                da_ptr = DA + offs_a[:, None] * stride_da + offs_d[None, :]
                da_c = tl.load(da_ptr, mask=a_ok[:, None] & d_ok, other=0.0)
                da_c = tl.dot(ds_b.to(b_c.dtype), b_c, da_c, input_precision=PREC,
                              out_dtype=ACC)
                tl.store(da_ptr, da_c, mask=a_ok[:, None] & d_ok)
                if ATOMIC_B:
                    a_c = tl.load(A + offs_a[:, None] * stride_a + offs_d[None, :],
                                  mask=a_ok[:, None] & d_ok, other=0.0)
                    if UPCAST:
                        a_c = a_c.to(ACC)
                    db_part = tl.dot(tl.trans((ds * ra[:, None]).to(a_c.dtype)), a_c,
                                     input_precision=PREC, out_dtype=ACC)
                    tl.atomic_add(DB + offs_b[:, None] * stride_db + offs_d[None, :], db_part,
                                  mask=b_ok[:, None] & d_ok, sem="relaxed")
    if ONE_CHUNK:
        offs_d = tl.arange(0, BLOCK_K)
        tl.store(DA + offs_a[:, None] * stride_da + offs_d[None, :], da_acc,
                 mask=a_ok[:, None] & (offs_d[None, :] < D))
    if WRITE_DSCALE:
        tl.store(DSCALE + offs_a, dscale, mask=a_ok)


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
# which cost the one-tile fp64 forwards their 32×32 tiles (they spilled; now 32×16). Not
# tuned by timing: that needs a GPU.
_TILE_TABLE = {
    "half": ((16, (128, 64, None, 8), (32, 32, None, 4)),
             (32, (128, 64, None, 8), (64, 32, None, 8)),
             (64, (128, 64, None, 8), (64, 32, None, 8)),
             (128, (64, 64, None, 4), (32, 32, None, 8)),
             (None, (128, 64, 32, 8), (64, 64, 32, 8))),
    "fp32": ((16, (32, 64, None, 4), (64, 64, None, 8)),
             (32, (32, 32, None, 8), (32, 32, None, 4)),
             (64, (16, 32, None, 8), (16, 16, None, 4)),
             (None, (32, 32, 64, 4), (16, 16, 16, 4, 1))),
    "fp64": ((16, (32, 16, None, 8), (32, 32, None, 8)),
             (32, (32, 16, None, 8), (32, 16, None, 8)),
             (None, (32, 32, 32, 8), (32, 32, 32, 8))),
}


def tile_config(D: int, dtype: torch.dtype, interpret: bool | None = None
                ) -> tuple[TileConfig, TileConfig]:
    """(forward, backward) tiles for feature width D and input dtype: the launcher's only
    source of tile sizes."""
    interpret = interpreting() if interpret is None else interpret
    if interpret:
        cfg = interpret_tiles(D)
        return cfg, cfg
    d_pow2 = max(16, triton.next_power_of_2(D))
    for max_d, fwd, bwd in _TILE_TABLE[dtype_class(dtype)]:
        if max_d is None or d_pow2 <= max_d:
            return tuple(TileConfig(t[0], t[1], t[2] or d_pow2, t[2] is None, t[3],
                                    t[4] if len(t) > 4 else NUM_STAGES) for t in (fwd, bwd))
    raise AssertionError("the tile table ends with a catch-all class")


@functools.lru_cache(maxsize=None)
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _col_programs(n_row_blocks: int, device: torch.device) -> int:
    """Persistent programs of a CLIP forward: enough to fill the GPU twice over; the
    column partials cost [P, M], so P stays a small constant (4 under the interpreter,
    small enough that the tests exercise programs owning several row blocks)."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return max(1, min(n_row_blocks, 2 * _sm_count(index)))
    return max(1, min(n_row_blocks, 4))


def forward(q, k, rq, rk, scale, row_key, col_key, extra, mask_diag: bool, need_col: bool):
    """Launch the forward.

    q (N,D), k (M,D) contiguous rows; rq (N,), rk (M,) inverse norms; scale 0-dim;
    row_key (N,), col_key (M,) int64; extra (N,) or None.
    Returns lse (N,), pos (N,) and clse (M,) (empty when not need_col), accumulation dtype.
    """
    n, d = q.shape
    m = k.shape[0]
    acc = acc_dtype(q.dtype)
    cfg = tile_config(d, q.dtype)[0]
    lse = out_buffer((n,), acc, q.device)
    pos = out_buffer((n,), acc, q.device)
    n_row_blocks = triton.cdiv(n, cfg.block_m)
    if need_col:
        progs = _col_programs(n_row_blocks, q.device)
        col_m = torch.full((progs, m), float("-inf"), dtype=acc, device=q.device)
        col_l = torch.zeros((progs, m), dtype=acc, device=q.device)
    else:
        progs = n_row_blocks
        col_m = col_l = lse  # never read: NEED_COL is off
    _softmax_fwd_kernel[(progs,)](
        q, k, rq, rk, scale, row_key, col_key, extra if extra is not None else lse,
        lse, pos, col_m, col_l, n, m, d, q.stride(0), k.stride(0),
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k,
        ONE_CHUNK=cfg.one_chunk, MASK_DIAG=mask_diag, HAS_EXTRA=extra is not None,
        NEED_COL=need_col, ACC=tl_acc(q.dtype), UPCAST=upcast(q.dtype),
        PREC=precision(q.dtype), num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    if not need_col:
        return lse, pos, lse.new_empty(0)
    clse = out_buffer((m,), acc, q.device)
    block = 128
    _merge_col_kernel[(triton.cdiv(m, block),)](col_m, col_l, clse, progs, m,
                                                 BLOCK=block, ACC=tl_acc(q.dtype))
    return lse, pos, clse


def _launch_grad(a, b, ra, rb, scale, row_key, col_key, lse, g_lse, g_pos, clse, g_clse,
                 da, db, dscale, *, transposed, mask_diag, has_col, atomic_b, write_dscale):
    na, d = a.shape
    cfg = tile_config(d, a.dtype)[1]
    _softmax_bwd_kernel[(triton.cdiv(na, cfg.block_m),)](
        a, b, ra, rb, scale, row_key, col_key, lse, g_lse, g_pos, clse, g_clse,
        da, db, dscale, na, b.shape[0], d, a.stride(0), b.stride(0), da.stride(0),
        db.stride(0), BLOCK_A=cfg.block_m, BLOCK_B=cfg.block_n, BLOCK_K=cfg.block_k,
        ONE_CHUNK=cfg.one_chunk, TRANSPOSED=transposed, MASK_DIAG=mask_diag,
        HAS_COL=has_col, ATOMIC_B=atomic_b, WRITE_DSCALE=write_dscale,
        ACC=tl_acc(a.dtype), UPCAST=upcast(a.dtype), PREC=precision(a.dtype),
        num_warps=cfg.num_warps, num_stages=cfg.num_stages)


def _ds_scale(rq, rk, g_lse, g_pos, g_clse, has_col) -> torch.Tensor:
    """σ = 2^e (0-dim, on the device, no synchronization) with σ·|dS_ij·r| ≤ 2^14 for every
    pair and either inverse norm r, from |dS_ij| ≤ |g_i| + |gpos_i| + |gc_j| (softmax
    probabilities are at most 1); 1 where that bound is 0 or not finite."""
    bound = g_lse.abs().max() + g_pos.abs().max()
    if has_col:
        bound = bound + g_clse.abs().max()
    return pow2_scale(bound * torch.maximum(rq.abs().max(), rk.abs().max()))



def backward(q, k, rq, rk, scale, row_key, col_key, lse, clse, g_lse, g_pos, g_clse,
             mask_diag: bool, normalize: bool, deterministic: bool):
    """Gradients (dq (N,D), dk (M,D) in the input dtype, dscale 0-dim accumulation dtype).

    deterministic=False: one recomputing pass (dK by atomics), 6·N·M·D backward FLOPs.
    deterministic=True: a dQ pass over row blocks and a dK pass over column blocks,
    each recomputing S (8·N·M·D), bitwise reproducible.
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
        sigma = _ds_scale(rq, rk, g_lse, g_pos, g_clse, has_col)
        g_lse, g_pos = g_lse * sigma, g_pos * sigma
        g_clse = g_clse * sigma if has_col else g_clse
    dq_acc = torch.zeros((n, d), dtype=acc, device=q.device)
    dk_acc = torch.zeros((m, d), dtype=acc, device=q.device)
    dscale_rows = out_buffer((n,), acc, q.device)
    g_clse = g_clse if has_col else g_lse
    common = dict(mask_diag=mask_diag, has_col=has_col)
    _launch_grad(q, k, rq, rk, scale, row_key, col_key, lse, g_lse, g_pos, clse, g_clse,
                 dq_acc, dk_acc, dscale_rows, transposed=False, atomic_b=not deterministic,
                 write_dscale=True, **common)
    if deterministic:
        _launch_grad(k, q, rk, rq, scale, row_key, col_key, lse, g_lse, g_pos, clse, g_clse,
                     dk_acc, dq_acc, dscale_rows, transposed=True, atomic_b=False,
                     write_dscale=False, **common)
    if sigma is not None:
        dq_acc.div_(sigma)
        dk_acc.div_(sigma)
        dscale_rows.div_(sigma)
    dq = finish_grad(q, rq, dq_acc, scale, normalize)
    dk = finish_grad(k, rk, dk_acc, scale, normalize)
    return dq, dk, dscale_rows.sum()
