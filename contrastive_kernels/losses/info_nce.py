"""InfoNCE on the tiled engine: in-batch keys, or a shared negative bank (MoCo queue)."""
from __future__ import annotations

import torch

from ._common import arange, inverse_temperature, reduce_rows, row_dot
from ..engines.softmax import EngineOptions, softmax_engine


def info_nce(query, positive_key, negative_keys, temperature, reduction, normalize, impl):
    """query, positive_key (N, D); negative_keys (K, D) or None. Returns the reduced loss.

    In-batch: candidates are all N keys, target i. With a bank: candidates are the own
    positive (an O(N·D) row dot product joined to the row's log-sum-exp as an extra logit)
    and the K negatives; other in-batch keys are not candidates.
    """
    scale = inverse_temperature(temperature, query)
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
