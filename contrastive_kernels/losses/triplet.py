"""Triplet margin losses: batch-hard mining on the kernels (O(N·D) loss and gradient),
batch-all and semi-hard over distance strips (triplet_strips.py)."""
from __future__ import annotations

import torch

from ..reference import _prep
from ._common import as_tensor, reduce_rows
from ..engines.library import backend_name, hardest_pairs, subtract_rows
from .triplet_strips import triplet_strip_loss


def triplet_margin_loss(embeddings, labels, margin, squared, normalize, reduction, impl,
                        mining="batch_hard"):
    """embeddings (N, D), labels (N,) integers, margin scalar ≥ 0. Returns the reduced
    loss ("none": (N,) per anchor)."""
    if mining != "batch_hard":
        return strip_triplet_loss(embeddings, labels, margin, squared, normalize, reduction,
                                  impl, mining)
    return batch_hard_loss(embeddings, labels, margin, squared, normalize, reduction, impl)


def strip_triplet_loss(embeddings, labels, margin, squared, normalize, reduction, impl,
                       mining):
    """Batch-all or semi-hard: "none" gives each anchor's sum over its triplets (positive
    pairs), "sum" their total, "mean" the total over the active triplets (batch-all) or
    over the positive pairs (semi-hard), 0 where there are none."""
    x = _prep(embeddings, normalize)
    return triplet_strip_loss(x, labels.to(torch.int64).contiguous(), as_tensor(margin, x),
                              mining, squared, impl, reduction)


def batch_hard_loss(embeddings, labels, margin, squared, normalize, reduction, impl):
    """embeddings (N, D), labels (N,) integers, margin scalar ≥ 0.

    The kernel finds, per anchor, the farthest same-label row and the nearest other-label
    row (one pass over distance tiles, lowest index on ties); the loss then needs only
    those 2·N pairs, so its value and gradient come from their differences in O(N·D) —
    exact for duplicates, and the gradient reaches the selected rows only."""
    x = embeddings.contiguous()
    keys = labels.to(torch.int64).contiguous()
    backend = backend_name(impl)
    pos, neg = hardest_pairs(x.detach(), keys, normalize, backend)
    valid = (pos >= 0) & (neg >= 0)
    xp = _prep(x, normalize)
    d_ap, d_an = SelectedDistances.apply(xp, pos, neg, valid, squared, backend)
    vec = torch.relu(d_ap - d_an + as_tensor(margin, x))
    vec = torch.where(valid, vec, torch.zeros_like(vec))
    return reduce_rows(vec, reduction, valid)


class SelectedDistances(torch.autograd.Function):
    """(x (N,D), pos (N,), neg (N,)) -> d(x_i, x_pos_i), d(x_i, x_neg_i), each (N,).

    d is Euclidean (squared if asked) from the difference; rows with ``valid`` False give
    0 and pass no gradient. The backward scatters each pair's gradient to the selected
    rows with the operator ``subtract_rows`` (the engine's ``add_rows`` where it has one:
    the CPU engine, in order, fast; ``index_add_`` otherwise)."""

    @staticmethod
    def forward(ctx, x, pos, neg, valid, squared: bool, backend: str):
        pos = torch.where(valid, pos, torch.arange(x.shape[0], device=x.device))
        neg = torch.where(valid, neg, torch.arange(x.shape[0], device=x.device))
        diff_p, diff_n = x - x.index_select(0, pos), x - x.index_select(0, neg)
        d2p, d2n = diff_p.pow(2).sum(1), diff_n.pow(2).sum(1)
        dp, dn = (d2p, d2n) if squared else (d2p.sqrt(), d2n.sqrt())
        ctx.save_for_backward(diff_p, diff_n, dp, dn, pos, neg)
        ctx.squared, ctx.backend = squared, backend
        return dp, dn

    @staticmethod
    def backward(ctx, g_p, g_n):
        diff_p, diff_n, dp, dn, pos, neg = ctx.saved_tensors
        # ∂d/∂x_i = diff/d (0 at d = 0, the reference's safe square root); squared: 2·diff.
        coef_p = _chain(g_p, dp, ctx.squared)
        coef_n = _chain(g_n, dn, ctx.squared)
        v, u = coef_p[:, None] * diff_p, coef_n[:, None] * diff_n
        dx = subtract_rows(v + u, pos, v, neg, u, ctx.backend)
        return dx, None, None, None, None, None


def _chain(grad, dist, squared):
    if squared:
        return 2 * grad
    safe = torch.where(dist > 0, dist, torch.ones_like(dist))
    return torch.where(dist > 0, grad / safe, torch.zeros_like(grad))
