"""The row-wise kernels both Triton engines share: inverse row norms (the fused
``F.normalize`` rule) and the normalization backward that turns a tile-product gradient
accumulator into the input's gradient."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .tiles import EPS, acc_dtype, nan_max, out_buffer, row_block, tl_acc


# Row counts are not specialized (no binary per divisibility of N; proof/catalogue.py).
@triton.jit(do_not_specialize=["N"])
def _inv_norm_kernel(X, R, N, D, stride_x, EPS_C: tl.constexpr,
                     BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr, ACC: tl.constexpr):
    """R[i] = 1 / max(||X[i]||, eps); a NaN norm gives NaN (not 1/eps), as in
    csrc/tile_math.h inverse_norm."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    sq = tl.zeros([BLOCK_R], ACC)
    for d0 in range(0, D, BLOCK_D):
        cols = d0 + tl.arange(0, BLOCK_D)
        x = tl.load(X + rows[:, None] * stride_x + cols[None, :],
                    mask=(rows[:, None] < N) & (cols[None, :] < D), other=0.0).to(ACC)
        sq += tl.sum(x * x, 1)
    r = 1.0 / nan_max(tl.sqrt(sq), EPS_C)
    tl.store(R + rows, r, mask=rows < N)


@triton.jit
def _summed_parts(G, rows, cols, m, stride_g, P, part_stride, ACC: tl.constexpr):
    """Σ_p G[p, rows, cols] in a fixed order (partials of one gradient, one per split)."""
    g = tl.zeros(m.shape, ACC)
    for p in range(0, P):
        g += tl.load(G + p * part_stride + rows[:, None] * stride_g + cols[None, :], mask=m,
                     other=0.0).to(ACC)
    return g


@triton.jit(do_not_specialize=["N", "P", "part_stride"])
def _norm_backward_kernel(X, R, G, SCALE, SIGMA, DX, N, D, stride_x, stride_g, stride_dx,
                          P, part_stride,
                          EPS_C: tl.constexpr, NORMALIZE: tl.constexpr,
                          HAS_SIGMA: tl.constexpr, BLOCK_R: tl.constexpr,
                          BLOCK_D: tl.constexpr, ACC: tl.constexpr):
    """dX from the P partials of G = Σ_j dS_ij r_j k_j: dx̂ = scale·G/σ, then the
    F.normalize backward. With D ≤ BLOCK_D every element is read once."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = rows < N
    scale = tl.load(SCALE).to(ACC)
    if HAS_SIGMA:
        # σ is a power of two: multiplying by 1/σ is the exact division.
        scale = scale * (1.0 / tl.load(SIGMA).to(ACC))
    r = tl.load(R + rows, mask=row_ok, other=1.0).to(ACC)
    radial = tl.zeros([BLOCK_R], ACC)
    one_chunk = D <= BLOCK_D
    if NORMALIZE:
        if not one_chunk:
            # ⟨dx̂, x̂⟩ over the whole row first: the tangential projection needs all of D.
            for d0 in range(0, D, BLOCK_D):
                cols = d0 + tl.arange(0, BLOCK_D)
                m = row_ok[:, None] & (cols[None, :] < D)
                x = tl.load(X + rows[:, None] * stride_x + cols[None, :], mask=m,
                            other=0.0).to(ACC)
                radial += tl.sum(_summed_parts(G, rows, cols, m, stride_g, P, part_stride,
                                               ACC) * x, 1)
    for d0 in range(0, D, BLOCK_D):
        cols = d0 + tl.arange(0, BLOCK_D)
        m = row_ok[:, None] & (cols[None, :] < D)
        x = tl.load(X + rows[:, None] * stride_x + cols[None, :], mask=m, other=0.0).to(ACC)
        g = _summed_parts(G, rows, cols, m, stride_g, P, part_stride, ACC)
        if NORMALIZE:
            if one_chunk:
                radial = tl.sum(g * x, 1)
            # Where the norm was clamped at eps, x̂ = x/eps and the clamp passes no gradient.
            radial_r = tl.where(r < 1.0 / EPS_C, radial * r * r, 0.0)
            dx = scale * r[:, None] * (g - radial_r[:, None] * x)
        else:
            dx = scale * g
        tl.store(DX + rows[:, None] * stride_dx + cols[None, :],
                 dx.to(DX.dtype.element_ty), mask=m)


def inverse_norms(x: torch.Tensor, normalize: bool) -> torch.Tensor:
    """r (N,) in the accumulation dtype: 1/max(||x_i||, eps), or ones when not normalizing."""
    n, d = x.shape
    acc = acc_dtype(x.dtype)
    if not normalize:
        return torch.ones(n, dtype=acc, device=x.device)
    r = out_buffer((n,), acc, x.device)
    if n == 0:
        return r
    block_r, block_d = row_block(d)
    _inv_norm_kernel[(triton.cdiv(n, block_r),)](
        x, r, n, d, x.stride(0), EPS_C=EPS, BLOCK_R=block_r, BLOCK_D=block_d,
        ACC=tl_acc(x.dtype))
    return r


def finish_grad(x, r, g_parts, scale, normalize, sigma=None):
    """dx (N, D) in x's dtype from the tile products' accumulator, given as P partials
    g_parts (P, N, D) (or (N, D)) whose sum is Σ_j dS_ij r_j k_j: scale·Σ g_parts / σ
    through the F.normalize backward (x (N, D), r (N,) its inverse norms, scale and σ
    one-element tensors; σ None for 1)."""
    n, d = x.shape
    dx = out_buffer(x.shape, x.dtype, x.device)
    if n == 0:
        return dx
    if g_parts.dim() == 2:
        g_parts = g_parts[None]
    block_r, block_d = row_block(d)
    _norm_backward_kernel[(triton.cdiv(n, block_r),)](
        x, r, g_parts, scale, sigma if sigma is not None else scale, dx, n, d, x.stride(0),
        g_parts.stride(1), dx.stride(0), g_parts.shape[0], g_parts.stride(0),
        EPS_C=EPS, NORMALIZE=normalize, HAS_SIGMA=sigma is not None, BLOCK_R=block_r,
        BLOCK_D=block_d, ACC=tl_acc(x.dtype))
    return dx
