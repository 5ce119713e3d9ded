"""SigLIP pairwise sigmoid loss on the pairwise engine."""
from __future__ import annotations

from ._common import arange
from ..engines.pairwise import SIGLIP, pair_params, pairwise_engine


def siglip_loss(image_features, text_features, logit_scale, logit_bias, reduction, normalize,
                impl):
    """image_features, text_features (N, D); logit_scale, logit_bias scalars.

    rows_i = Σ_j softplus(−z_ij·(logit_scale·⟨Î_i, T̂_j⟩ + logit_bias)), z_ii = +1, else −1.
    Returns mean_i rows_i (open_clip's (1/N)·Σ_ij), Σ_i rows_i, or rows (N,) for "none"."""
    n = image_features.shape[0]
    idx = arange(n, image_features)
    params = pair_params(image_features, scale=logit_scale, bias=logit_bias)
    weight = 1.0 / n if reduction == "mean" else 1.0
    return pairwise_engine(image_features, text_features, params, impl=impl, kind=SIGLIP,
                           row_key=idx, col_key=idx, normalize=normalize, weight=weight,
                           reduced=reduction != "none")
