"""The pairwise (non-softmax) engine as one autograd Function: SigLIP and Hadsell terms.

A pairwise loss is a sum of one term per pair, ``rows_i = Σ_{j valid} f(pair_ij)``, with no
row statistics, so a pass over the tiles can form the loss and its gradient together. The
kind of term is a compile-time flag in every kernel:

- ``SIGLIP``:  u_ij = scale·⟨q̂_i, k̂_j⟩ + bias,  f = softplus(−z_ij·u_ij), z = +1 where
  row_key_i == col_key_j, else −1 (csrc/tile_math.h: siglip_term / siglip_grad).
- ``HADSELL``: d²_ij = ‖q̂_i‖² + ‖k̂_j‖² − 2⟨q̂_i, k̂_j⟩ (recomputed from the difference
  where the points nearly coincide), f = d² for matching keys, relu(margin − d)² otherwise
  (hadsell_term / hadsell_grad / hadsell_margin_grad).

Every kernel backend module implements (shapes: q (N, D), k (M, D) contiguous; rq (N,),
rk (M,) inverse norms or ones; params (3,) = [scale, bias, margin] in the accumulation
dtype on the features' device; row_key (N,), col_key (M,) int64; g_row (N,) upstream
weight of each row's sum):

    pair_forward(kind, q, k, rq, rk, params, row_key, col_key, mask_diag) -> rows (N,)
    pair_backward(kind, q, k, rq, rk, params, row_key, col_key, g_row, mask_diag,
                  normalize, want_rows, deterministic)
        -> rows (N,) (empty unless want_rows), dq (N, D), dk (M, D) in the input dtype,
           dparams (3,) = [dscale, dbias, dmargin]
    hardest_pairs(x, rx, key) -> pos (N,), neg (N,) int64: per row the farthest row with
        the same key (j ≠ i) and the nearest with another key (lowest index on ties,
        -1 where there is none)

``pair_backward`` is one pass (3 tile products); with a uniform upstream gradient (a
"mean" or "sum" loss) it runs in the forward, so forward+backward costs 3 products, and
the backward only scales the saved gradients.
"""
from __future__ import annotations

from types import ModuleType

import torch

SIGLIP = 0
HADSELL = 1


class PairwiseEngineFunction(torch.autograd.Function):
    """(q, k, params) -> weight·Σ_i rows_i (reduced) or weight·rows (N,)."""

    @staticmethod
    def forward(ctx, q, k, params, row_key, col_key, kind: int, mask_diag: bool,
                normalize: bool, weight: float, reduced: bool, impl: ModuleType,
                deterministic: bool):
        rq = impl.inverse_norms(q, normalize)
        rk = rq if k is q else impl.inverse_norms(k, normalize)
        ctx.args = (kind, mask_diag, normalize, weight, reduced, impl, deterministic)
        wants_grad = any(ctx.needs_input_grad[:3])
        if reduced and wants_grad:
            # Every row gets the same upstream weight: form the gradient now (one pass for
            # loss and gradient), and let backward scale it by the incoming scalar.
            g_row = torch.full((q.shape[0],), weight, dtype=rq.dtype, device=q.device)
            rows, dq, dk, dparams = impl.pair_backward(
                kind, q, k, rq, rk, params, row_key, col_key, g_row, mask_diag, normalize,
                True, deterministic)
            ctx.save_for_backward(dq, dk, dparams)
            ctx.fused = True
            return rows.sum() * weight
        ctx.fused = False
        rows = impl.pair_forward(kind, q, k, rq, rk, params, row_key, col_key, mask_diag)
        ctx.save_for_backward(q, k, rq, rk, params, row_key, col_key)
        return rows.sum() * weight if reduced else rows * weight

    @staticmethod
    def backward(ctx, grad):
        kind, mask_diag, normalize, weight, reduced, impl, deterministic = ctx.args
        if ctx.fused:
            dq, dk, dparams = ctx.saved_tensors
            g = grad.to(dparams.dtype)
            dq = (dq * g.to(dq.dtype)) if ctx.needs_input_grad[0] else None
            dk = (dk * g.to(dk.dtype)) if ctx.needs_input_grad[1] else None
            dp = dparams * g if ctx.needs_input_grad[2] else None
            return dq, dk, dp, *([None] * 9)
        q, k, rq, rk, params, row_key, col_key = ctx.saved_tensors
        g_row = (grad * weight).to(rq.dtype).expand(q.shape[0]).contiguous()
        _, dq, dk, dparams = impl.pair_backward(kind, q, k, rq, rk, params, row_key, col_key,
                                                g_row, mask_diag, normalize, False,
                                                deterministic)
        return (dq if ctx.needs_input_grad[0] else None,
                dk if ctx.needs_input_grad[1] else None,
                dparams if ctx.needs_input_grad[2] else None, *([None] * 9))


def pair_params(like: torch.Tensor, scale=None, bias=None, margin=None) -> torch.Tensor:
    """[scale, bias, margin] (3,) in like's accumulation dtype, keeping the autograd graph
    of tensor arguments (a learnable logit_scale gets its gradient through the stack)."""
    acc = torch.float64 if like.dtype == torch.float64 else torch.float32
    parts = []
    for value in (scale, bias, margin):
        if isinstance(value, torch.Tensor):
            parts.append(value.to(device=like.device, dtype=acc).reshape(()))
        else:
            parts.append(torch.tensor(0.0 if value is None else float(value), dtype=acc,
                                      device=like.device))
    return torch.stack(parts)


def pairwise_engine(q, k, params, *, impl: ModuleType, kind: int, row_key, col_key,
                    mask_diag: bool = False, normalize: bool = False, weight: float = 1.0,
                    reduced: bool = True):
    """Run the engine. q (N, D), k (M, D) share dtype and device (pass the same tensor for
    self-pairs); params (3,) from :func:`pair_params`; row_key (N,), col_key (M,) int64.
    Returns weight·Σ_i rows_i (0-dim) when ``reduced``, else weight·rows (N,); float32
    (float64 for float64 inputs)."""
    shared = k is q
    q = q.contiguous()
    k = q if shared else k.contiguous()
    deterministic = torch.are_deterministic_algorithms_enabled()
    return PairwiseEngineFunction.apply(q, k, params, row_key.contiguous(),
                                        col_key.contiguous(), kind, mask_diag, normalize,
                                        float(weight), reduced, impl, deterministic)
