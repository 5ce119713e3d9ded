"""InfoNCE on the tiled engine: in-batch keys, or a shared negative bank (MoCo queue)."""
from __future__ import annotations

import torch

from . import debiased
from ._common import arange, inverse_temperature, reduce_rows, row_dot
from ..engines.softmax import EngineOptions, softmax_engine, softmax_engine_negatives


def info_nce(query, positive_key, negative_keys, temperature, reduction, normalize, impl,
             tau_plus=0.0, beta=0.0):
    """query, positive_key (N, D); negative_keys (K, D) or None. Returns the reduced loss.

    In-batch: candidates are all N keys, target i. With a bank: candidates are the own
    positive (an O(N·D) row dot product joined to the row's log-sum-exp as an extra logit)
    and the K negatives; other in-batch keys are not candidates. ``tau_plus``/``beta``:
    the debiased / hard-negative estimator over the same negatives (losses/debiased.py).
    """
    scale = inverse_temperature(temperature, query)
    if debiased.active(tau_plus, beta):
        return reduce_rows(estimated_rows(query, positive_key, negative_keys, scale, impl,
                                          normalize, tau_plus, beta), reduction)
    opts = EngineOptions(normalize=normalize)
    n = query.shape[0]
    if negative_keys is None:
        idx = arange(n, query)
        lse, pos, _ = softmax_engine(query, positive_key, scale, impl=impl, row_key=idx,
                                     col_key=idx, opts=opts)
        return reduce_rows(lse - pos, reduction)
    positive = scale * row_dot(query, positive_key, normalize)
    no_target = torch.full((n,), -1, dtype=torch.int64, device=query.device)
    lse, _, _ = softmax_engine(query, negative_keys, scale, impl=impl, row_key=no_target,
                               col_key=arange(negative_keys.shape[0], query), extra=positive,
                               opts=opts)
    return reduce_rows(lse - positive, reduction)


def estimated_rows(query, positive_key, negative_keys, scale, impl, normalize, tau_plus, beta):
    """(N,) rows of the debiased / hard-negative InfoNCE, from one engine pass: the
    negatives of row i are the other in-batch keys (N − 1 of them), or the bank's K rows."""
    multipliers = debiased.multipliers(beta)
    if negative_keys is None:
        idx = arange(query.shape[0], query)
        _, positive, _, negative_lse = softmax_engine_negatives(
            query, positive_key, scale, multipliers, impl=impl, row_key=idx, col_key=idx,
            opts=EngineOptions(normalize=normalize))
        n_neg = query.shape[0] - 1
    else:
        positive = scale * row_dot(query, positive_key, normalize)
        no_target = torch.full((query.shape[0],), -1, dtype=torch.int64, device=query.device)
        _, _, _, negative_lse = softmax_engine_negatives(
            query, negative_keys, scale, multipliers, impl=impl, row_key=no_target,
            col_key=arange(negative_keys.shape[0], query),
            opts=EngineOptions(normalize=normalize))
        n_neg = negative_keys.shape[0]
    return debiased.estimator_rows(positive, negative_lse, n_neg, scale, tau_plus, beta)
