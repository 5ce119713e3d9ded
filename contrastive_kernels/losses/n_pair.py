"""Sohn's multi-class N-pair loss on the tiled engine (raw dot products, scale 1)."""
from __future__ import annotations

import torch

from ._common import acc_dtype, arange, reduce_rows
from ..engines.softmax import EngineOptions, softmax_engine


def n_pair_loss(anchors, positives, l2_reg, reduction, impl):
    """anchors, positives (N, D): CE of A Pᵀ with targets arange, plus per row
    l2_reg·(‖a_i‖² + ‖p_i‖²). Returns the reduced (N,) values."""
    idx = arange(anchors.shape[0], anchors)
    one = torch.ones((), dtype=acc_dtype(anchors), device=anchors.device)
    lse, pos, _ = softmax_engine(anchors, positives, one, impl=impl, row_key=idx, col_key=idx,
                                 opts=EngineOptions(normalize=False))
    a = anchors.to(acc_dtype(anchors))
    p = positives.to(acc_dtype(positives))
    rows = lse - pos + l2_reg * (a.pow(2).sum(1) + p.pow(2).sum(1))
    return reduce_rows(rows, reduction)
