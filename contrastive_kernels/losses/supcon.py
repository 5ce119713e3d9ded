"""Supervised contrastive loss (Khosla et al. L_out) on the tiled engine."""
from __future__ import annotations

import torch

from ._common import as_tensor, reduce_rows
from ..engines.softmax import EngineOptions, softmax_engine


def flatten_views(features, labels):
    """[B, V, D] -> view-major [V·B, D] with labels repeated V times; [N, D] unchanged.
    labels None means each sample is its own class."""
    if features.dim() == 3:
        b, v = features.shape[:2]
        flat = torch.cat(torch.unbind(features, dim=1), dim=0)
        base = labels if labels is not None else torch.arange(b, device=features.device)
        return flat, base.repeat(v)
    if labels is None:
        labels = torch.arange(features.shape[0], device=features.device)
    return features, labels


def supcon_loss(features, labels, temperature, base_temperature, reduction, normalize, impl):
    """features (N, D) or (B, V, D); labels (N,)/(B,) or None.

    The engine gives lse_i over A(i) and pos_i = Σ_{p∈P(i)} s_ip (positives found in the
    tile by comparing labels); |P(i)| comes from label counts in O(N). Anchors with empty
    P(i) give 0 and are left out of the mean."""
    flat, flat_labels = flatten_views(features, labels)
    flat_labels = flat_labels.to(torch.int64)
    tau = as_tensor(temperature, flat)
    lse, pos, _ = softmax_engine(flat, flat, 1.0 / tau, impl=impl, row_key=flat_labels,
                                 col_key=flat_labels,
                                 opts=EngineOptions(mask_diag=True, normalize=normalize))
    _, inverse, counts = torch.unique(flat_labels, return_inverse=True, return_counts=True)
    n_pos = (counts[inverse] - 1).to(lse.dtype)
    valid = n_pos > 0
    # Excluded anchors may have lse = -inf (no candidate at all, N = 1): zero their inputs
    # before the arithmetic, or where()'s backward would meet 0·inf = NaN.
    lse = torch.where(valid, lse, torch.zeros_like(lse))
    pos = torch.where(valid, pos, torch.zeros_like(pos))
    rows = -(tau / as_tensor(base_temperature, flat)) * (pos / n_pos.clamp_min(1) - lse)
    rows = torch.where(valid, rows, torch.zeros_like(rows))
    return reduce_rows(rows, reduction, valid)
