"""Symmetric CLIP loss on the tiled engine: row and column log-sum-exp from one pass."""
from __future__ import annotations

from ._common import arange, as_tensor, reduce_rows
from ..engines.softmax import EngineOptions, softmax_engine


def clip_loss(image_features, text_features, logit_scale, reduction, normalize, impl):
    """image_features, text_features (N, D); logit_scale scalar (already exponentiated).

    One forward pass gives lse_i over S's rows and clse_j over its columns; the target
    logit S_ii is shared by row i and column i. Returns the reduced ½(row_i + col_i)."""
    idx = arange(image_features.shape[0], image_features)
    lse, pos, clse = softmax_engine(image_features, text_features,
                                    as_tensor(logit_scale, image_features), impl=impl,
                                    row_key=idx, col_key=idx,
                                    opts=EngineOptions(need_col=True, normalize=normalize))
    return reduce_rows(0.5 * ((lse - pos) + (clse - pos)), reduction)
