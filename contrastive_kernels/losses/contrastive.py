"""Hadsell et al. pairwise margin contrastive loss on the pairwise engine."""
from __future__ import annotations

import torch

from ..engines.pairwise import HADSELL, pair_params, pairwise_engine


def contrastive_loss(embeddings, labels, margin, reduction, impl):
    """embeddings (N, D), N ≥ 2; labels (N,) integers; margin scalar.

    rows_i = Σ_{j≠i} (d²_ij if y_i = y_j else relu(margin − d_ij)²). Returns the mean over
    the N(N−1) ordered pairs, the sum of rows_i/(N−1), or rows/(N−1) (N,) for "none"."""
    n = embeddings.shape[0]
    params = pair_params(embeddings, margin=margin)
    weight = 1.0 / (n - 1) / (n if reduction == "mean" else 1)
    keys = labels.to(torch.int64)
    return pairwise_engine(embeddings, embeddings, params, impl=impl, kind=HADSELL,
                           row_key=keys, col_key=keys, mask_diag=True, weight=weight,
                           reduced=reduction != "none")
