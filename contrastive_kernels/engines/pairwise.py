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
                  normalize, want_rows, deterministic, need_dq=True, need_dk=True)
        -> rows (N,) (empty unless want_rows), dq (N, D), dk (M, D) in the input dtype
           ((0, D) where need_dq / need_dk is False), dparams (3,) = [dscale, dbias, dmargin]
    hardest_pairs(x, rx, key) -> pos (N,), neg (N,) int64: per row the farthest row with
        the same key (j ≠ i) and the nearest with another key (lowest index on ties,
        -1 where there is none)

``pair_backward`` is one pass (3 tile products); with a uniform upstream gradient (a
"mean" or "sum" loss) it runs in the forward (the operator
``contrastive_kernels::pair_loss_and_grad``), so forward+backward costs 3 products, and
the backward only scales the saved gradients. Otherwise ``pair_forward`` (1 product) runs,
and its autograd formula the recomputing ``pair_backward`` (engines/library.py).
"""
from __future__ import annotations

from types import ModuleType

import torch

from .library import backend_name, pair_forward, pair_loss_and_grad

SIGLIP = 0
HADSELL = 1


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
    args = (q, k, params, row_key.contiguous(), col_key.contiguous(), kind, mask_diag,
            normalize, shared, deterministic)
    wants_grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad
                                              or params.requires_grad)
    if reduced and wants_grad:
        # Every row gets the same upstream weight: form the gradient now (one pass for
        # loss and gradient); the backward scales it by the incoming scalar.
        return pair_loss_and_grad(*args, float(weight), backend_name(impl))[0]
    rows = pair_forward(*args, backend_name(impl))[0]
    return rows.sum() * weight if reduced else rows * weight
