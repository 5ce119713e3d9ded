"""The row-wise kernels both Triton engines share: inverse row norms (the fused
``F.normalize`` rule) and the normalization backward that turns a tile-product gradient
accumulator into the input's gradient."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .tiles import EPS, acc_dtype, nan_max, out_buffer, row_block, tl_acc


@triton.jit
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
def _norm_backward_kernel(X, R, G, SCALE, DX, N, D, stride_x, stride_g, stride_dx,
                          EPS_C: tl.constexpr, NORMALIZE: tl.constexpr,
                          BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr, ACC: tl.constexpr):
    """dX from G = Σ_j dS_ij r_j k_j: dx̂ = scale·G, then the F.normalize backward."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = rows < N
    scale = tl.load(SCALE).to(ACC)
    r = tl.load(R + rows, mask=row_ok, other=1.0).to(ACC)
    radial = tl.zeros([BLOCK_R], ACC)
    if NORMALIZE:
        # ⟨dx̂, x̂⟩ over the whole row first: the tangential projection needs all of D.
        for d0 in range(0, D, BLOCK_D):
            cols = d0 + tl.arange(0, BLOCK_D)
            m = row_ok[:, None] & (cols[None, :] < D)
            x = tl.load(X + rows[:, None] * stride_x + cols[None, :], mask=m, other=0.0).to(ACC)
            g = tl.load(G + rows[:, None] * stride_g + cols[None, :], mask=m, other=0.0).to(ACC)
            radial += tl.sum(g * x, 1)
        # Where the norm was clamped at eps, x̂ = x/eps and the clamp passes no gradient.
        unclamped = r < 1.0 / EPS_C
        radial = tl.where(unclamped, radial * r * r, 0.0)
    for d0 in range(0, D, BLOCK_D):
        cols = d0 + tl.arange(0, BLOCK_D)
        m = row_ok[:, None] & (cols[None, :] < D)
        x = tl.load(X + rows[:, None] * stride_x + cols[None, :], mask=m, other=0.0).to(ACC)
        g = tl.load(G + rows[:, None] * stride_g + cols[None, :], mask=m, other=0.0).to(ACC)
        if NORMALIZE:
            dx = scale * r[:, None] * (g - radial[:, None] * x)
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


def finish_grad(x, r, g_acc, scale, normalize):
    """dx (N, D) in x's dtype from the tile products' accumulator g_acc (N, D) =
    Σ_j dS_ij r_j k_j: scale·g_acc through the F.normalize backward (x (N, D), r (N,) its
    inverse norms, scale a one-element tensor)."""
    n, d = x.shape
    dx = out_buffer(x.shape, x.dtype, x.device)
    if n == 0:
        return dx
    block_r, block_d = row_block(d)
    _norm_backward_kernel[(triton.cdiv(n, block_r),)](
        x, r, g_acc, scale, dx, n, d, x.stride(0), g_acc.stride(0), dx.stride(0),
        EPS_C=EPS, NORMALIZE=normalize, BLOCK_R=block_r, BLOCK_D=block_d,
        ACC=tl_acc(x.dtype))
    return dx
