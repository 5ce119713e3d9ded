"""SimCLR NT-Xent on the tiled engine: one self-similarity pass over cat(z1, z2), also for
the decoupled form (DCL: the positive left out of the denominator, the engine's
log-sum-exp over the negatives), weighted positives and the debiased / hard-negative
estimator. Against separate key views (the distributed modes), ``two_view_rows`` merges
four candidate sets per row."""
from __future__ import annotations

import torch

from . import debiased
from ._common import arange, inverse_temperature, reduce_rows, row_dot
from ..engines.softmax import (EngineOptions, candidate_lse, merge_lse, softmax_engine,
                               softmax_engine_negatives, widen_half)


def nt_xent_loss(z1, z2, temperature, reduction, normalize, impl, decoupled=False,
                 positive_weight=None, tau_plus=0.0, beta=0.0):
    """z1, z2 (N, D). Rows of z = cat(z1, z2) (2N, D) against all other rows, target
    (i + N) mod 2N; ``decoupled`` also leaves the target out of the candidates;
    ``positive_weight`` (N,) or (2N,) multiplies the target logit; ``tau_plus``/``beta``
    the debiased / hard-negative estimator (losses/debiased.py). Returns the reduced
    loss ("none": (2N,), z1's rows first)."""
    scale = inverse_temperature(temperature, z1)
    z = torch.cat([z1, z2], dim=0)
    two_n = z.shape[0]
    cols = arange(two_n, z)
    keys = dict(impl=impl, row_key=(cols + two_n // 2) % two_n, col_key=cols,
                opts=EngineOptions(mask_diag=True, normalize=normalize))
    if debiased.active(tau_plus, beta):  # the negatives: every row but itself and partner
        _, pos, _, negatives = softmax_engine_negatives(z, z, scale,
                                                        debiased.multipliers(beta), **keys)
        rows = debiased.estimator_rows(pos, negatives, two_n - 2, scale, tau_plus, beta)
        return reduce_rows(rows, reduction)
    if decoupled:  # the denominator is the negatives' log-sum-exp, from the same pass
        _, pos, _, negatives = softmax_engine_negatives(z, z, scale, [1.0], **keys)
        lse = negatives[0]
    else:
        lse, pos, _ = softmax_engine(z, z, scale, **keys)
    return reduce_rows(lse - _weighted(pos, positive_weight), reduction)


def _weighted(positive, positive_weight):
    """The (2N,) target logits times positive_weight ((N,) for both views alike, or (2N,);
    None: unweighted)."""
    if positive_weight is None:
        return positive
    weight = positive_weight.to(positive.dtype)
    return positive * (weight.repeat(2) if weight.shape[0] * 2 == positive.shape[0]
                       else weight)


def two_view_rows(z1, z2, keys1, keys2, scale, impl, normalize, decoupled, positive_weight):
    """(2N,) rows ℓ = log Σ exp(candidates) − w·s(z_i, partner_i) of the local views z1, z2
    (N, D) against separate key views keys1, keys2 (K, D) that begin with z1's and z2's
    own rows (two_view_lse's candidate sets): the distributed modes."""
    # Four engine calls share these tensors: sum their gradients in fp32.
    z1, z2, keys1, keys2 = widen_half(z1, z2, keys1, keys2)
    lse = two_view_lse(z1, z2, keys1, keys2, scale, impl, normalize, decoupled)
    return lse - _weighted((scale * row_dot(z1, z2, normalize)).repeat(2), positive_weight)


def two_view_lse(z1, z2, keys1, keys2, scale, impl, normalize, exclude_partner):
    """(2N,) log Σ e^{scale·cos} over each row's candidates, z1's rows first: per view, the
    same view's keys without the row itself and the other view's keys (without the
    partner when ``exclude_partner``), merged. keys1, keys2 (K, D) begin with z1's and
    z2's own rows."""
    parts = []
    for own, own_keys, other_keys in ((z1, keys1, keys2), (z2, keys2, keys1)):
        parts.append(merge_lse([
            candidate_lse(own, own_keys, scale, impl=impl, normalize=normalize,
                          exclude_own=True),
            candidate_lse(own, other_keys, scale, impl=impl, normalize=normalize,
                          exclude_own=exclude_partner)]))
    return torch.cat(parts)
