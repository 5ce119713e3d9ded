"""Batch-hard triplet loss: tiled mining on the kernels, O(N·D) loss and gradient."""
from __future__ import annotations

import torch

from ..reference import _prep, _safe_sqrt
from ._common import as_tensor, reduce_rows


def triplet_margin_loss(embeddings, labels, margin, squared, normalize, reduction, impl):
    """embeddings (N, D), labels (N,) integers, margin scalar ≥ 0.

    The kernel finds, per anchor, the farthest same-label row and the nearest other-label
    row (one pass over distance tiles, lowest index on ties); the loss then needs only
    those 2·N pairs, so its value and gradient come from their differences in O(N·D) —
    exact for duplicates, and the gradient reaches the selected rows only."""
    x = embeddings.contiguous()
    keys = labels.to(torch.int64).contiguous()
    with torch.no_grad():
        rx = impl.inverse_norms(x, normalize)
        pos, neg = impl.hardest_pairs(x, rx, keys)
    valid = (pos >= 0) & (neg >= 0)
    xp = _prep(x, normalize)
    d_ap = _distance(xp, pos.clamp_min(0), squared)
    d_an = _distance(xp, neg.clamp_min(0), squared)
    vec = torch.relu(d_ap - d_an + as_tensor(margin, x))
    vec = torch.where(valid, vec, torch.zeros_like(vec))
    return reduce_rows(vec, reduction, valid)


def _distance(x, idx, squared):
    """‖x_i − x_idx[i]‖ (squared if asked) per row (N,), from the difference."""
    d2 = (x - x.index_select(0, idx)).pow(2).sum(dim=1)
    return d2 if squared else _safe_sqrt(d2)
