"""Unsupervised and supervised SimCSE on the tiled engine."""
from __future__ import annotations

from ._common import arange, inverse_temperature, reduce_rows
from ..engines.softmax import EngineOptions, softmax_engine


def simcse_unsup_loss(y_pred, lamda, reduction, impl):
    """y_pred (N, D), N even; rows 2k and 2k+1 are each other's positive; cosine / lamda,
    own column excluded. Returns the reduced (N,) cross-entropies."""
    cols = arange(y_pred.shape[0], y_pred)
    lse, pos, _ = softmax_engine(y_pred, y_pred, inverse_temperature(lamda, y_pred),
                                 impl=impl, row_key=cols ^ 1, col_key=cols,
                                 opts=EngineOptions(mask_diag=True, normalize=True))
    return reduce_rows(lse - pos, reduction)


def simcse_sup_loss(y_pred, lamda, reduction, impl):
    """y_pred (3B, D) as (anchor, positive, hard negative) triplets. Anchors (B, D)
    against the non-anchor rows (2B, D) in order; target of anchor k is column 2k."""
    b = y_pred.shape[0] // 3
    triplets = y_pred.view(b, 3, y_pred.shape[1])
    anchors = triplets[:, 0]
    candidates = triplets[:, 1:].reshape(2 * b, y_pred.shape[1])
    lse, pos, _ = softmax_engine(anchors, candidates, inverse_temperature(lamda, y_pred),
                                 impl=impl, row_key=2 * arange(b, y_pred),
                                 col_key=arange(2 * b, y_pred),
                                 opts=EngineOptions(normalize=True))
    return reduce_rows(lse - pos, reduction)
