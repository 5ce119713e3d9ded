"""SimCLR NT-Xent on the tiled engine: one self-similarity pass over cat(z1, z2); the
decoupled form (DCL: the positive left out of the denominator) and weighted positives
as four candidate sets merged per row."""
from __future__ import annotations

import torch

from . import debiased
from ._common import arange, inverse_temperature, reduce_rows, row_dot
from ..engines.softmax import (EngineOptions, candidate_lse, merge_lse, softmax_engine,
                               widen_half)


def nt_xent_loss(z1, z2, temperature, reduction, normalize, impl, decoupled=False,
                 positive_weight=None, tau_plus=0.0, beta=0.0):
    """z1, z2 (N, D). Rows of z = cat(z1, z2) (2N, D) against all other rows, target
    (i + N) mod 2N; ``decoupled`` also leaves the target out of the candidates;
    ``positive_weight`` (N,) or (2N,) multiplies the target logit; ``tau_plus``/``beta``
    the debiased / hard-negative estimator (losses/debiased.py). Returns the reduced
    loss ("none": (2N,), z1's rows first)."""
    scale = inverse_temperature(temperature, z1)
    if debiased.active(tau_plus, beta):
        return reduce_rows(estimated_rows(z1, z2, scale, impl, normalize, tau_plus, beta),
                           reduction)
    if decoupled or positive_weight is not None:
        rows = two_view_rows(z1, z2, z1, z2, scale, impl, normalize, decoupled,
                             positive_weight)
        return reduce_rows(rows, reduction)
    z = torch.cat([z1, z2], dim=0)
    two_n = z.shape[0]
    cols = arange(two_n, z)
    targets = (cols + two_n // 2) % two_n
    lse, pos, _ = softmax_engine(z, z, scale, impl=impl, row_key=targets, col_key=cols,
                                 opts=EngineOptions(mask_diag=True, normalize=normalize))
    return reduce_rows(lse - pos, reduction)


def two_view_rows(z1, z2, keys1, keys2, scale, impl, normalize, decoupled, positive_weight):
    """(2N,) rows ℓ = log Σ exp(candidates) − w·s(z_i, partner_i) of the local views z1, z2
    (N, D) against key views keys1, keys2 (K, D) that begin with z1's and z2's own rows:
    per view, the same view without the row itself and the other view (without the
    partner when decoupled), merged."""
    # Four engine calls share these tensors: sum their gradients in fp32.
    z1, z2, keys1, keys2 = widen_half(z1, z2, keys1, keys2) if keys1 is not z1 else \
        (widen_half(z1, z2) * 2)
    rows = []
    for own, other, own_keys, other_keys in ((z1, z2, keys1, keys2), (z2, z1, keys2, keys1)):
        parts = [candidate_lse(own, own_keys, scale, impl=impl, normalize=normalize,
                               exclude_own=True),
                 candidate_lse(own, other_keys, scale, impl=impl, normalize=normalize,
                               exclude_own=decoupled)]
        rows.append((merge_lse(parts), scale * row_dot(own, other, normalize)))
    lse = torch.cat([rows[0][0], rows[1][0]])
    positive = torch.cat([rows[0][1], rows[1][1]])
    if positive_weight is not None:
        weight = positive_weight.to(positive.dtype)
        positive = positive * (weight.repeat(2) if weight.shape[0] * 2 == lse.shape[0]
                               else weight)
    return lse - positive


def negative_lse(z1, z2, scale, impl, normalize):
    """(2N,) log Σ over each row's 2N − 2 negatives (every row of cat(z1, z2) but itself
    and its partner) of e^{scale·cos}: per view, the same view without the row and the
    other view without the partner, merged."""
    parts = []
    for own, other in ((z1, z2), (z2, z1)):
        parts.append(merge_lse([
            candidate_lse(own, own, scale, impl=impl, normalize=normalize, exclude_own=True),
            candidate_lse(own, other, scale, impl=impl, normalize=normalize,
                          exclude_own=True)]))
    return torch.cat(parts)


def estimated_rows(z1, z2, scale, impl, normalize, tau_plus, beta):
    """(2N,) rows of the debiased / hard-negative NT-Xent (N ≥ 2)."""
    z1, z2 = widen_half(z1, z2)  # several engine calls share them: fp32 gradient sums
    positive = (scale * row_dot(z1, z2, normalize)).repeat(2)
    lse_main = negative_lse(z1, z2, scale * (1 + beta), impl, normalize)
    lse_weight = negative_lse(z1, z2, scale * beta, impl, normalize) if beta else None
    return debiased.estimator_rows(positive, lse_main, lse_weight, 2 * z1.shape[0] - 2, scale,
                                   tau_plus)
