"""nn.Module wrappers: the constructor takes the functional's keyword arguments, forward
takes its tensors."""
from __future__ import annotations

import torch

from . import functional as F


class _LossModule(torch.nn.Module):

    def __init__(self, **kwargs):
        super().__init__()
        self.kwargs = kwargs

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.kwargs.items())


class InfoNCELoss(_LossModule):
    """forward(query (N,D), positive_key (N,D), negative_keys (K,D) or None)."""

    def __init__(self, temperature=0.1, reduction="mean", normalize=True, backend="auto"):
        super().__init__(temperature=temperature, reduction=reduction, normalize=normalize,
                         backend=backend)

    def forward(self, query, positive_key, negative_keys=None):
        return F.info_nce(query, positive_key, negative_keys, **self.kwargs)


class NTXentLoss(_LossModule):
    """forward(z1 (N,D), z2 (N,D))."""

    def __init__(self, temperature=0.1, reduction="mean", normalize=True, backend="auto"):
        super().__init__(temperature=temperature, reduction=reduction, normalize=normalize,
                         backend=backend)

    def forward(self, z1, z2):
        return F.nt_xent_loss(z1, z2, **self.kwargs)


class ClipLoss(_LossModule):
    """forward(image_features (N,D), text_features (N,D), logit_scale)."""

    def __init__(self, reduction="mean", normalize=False, backend="auto"):
        super().__init__(reduction=reduction, normalize=normalize, backend=backend)

    def forward(self, image_features, text_features, logit_scale):
        return F.clip_loss(image_features, text_features, logit_scale, **self.kwargs)


class SigLipLoss(_LossModule):
    """forward(image_features (N,D), text_features (N,D), logit_scale, logit_bias)."""

    def __init__(self, reduction="mean", normalize=False, backend="auto"):
        super().__init__(reduction=reduction, normalize=normalize, backend=backend)

    def forward(self, image_features, text_features, logit_scale, logit_bias):
        return F.siglip_loss(image_features, text_features, logit_scale, logit_bias,
                             **self.kwargs)


class SimCSEUnsupLoss(_LossModule):
    """forward(y_pred (N,D)), rows 2k and 2k+1 paired."""

    def __init__(self, lamda=0.05, reduction="mean", backend="auto"):
        super().__init__(lamda=lamda, reduction=reduction, backend=backend)

    def forward(self, y_pred):
        return F.simcse_unsup_loss(y_pred, **self.kwargs)


class SimCSESupLoss(_LossModule):
    """forward(y_pred (3B,D)) as (anchor, positive, hard negative) triplets."""

    def __init__(self, lamda=0.05, reduction="mean", backend="auto"):
        super().__init__(lamda=lamda, reduction=reduction, backend=backend)

    def forward(self, y_pred):
        return F.simcse_sup_loss(y_pred, **self.kwargs)


class SupConLoss(_LossModule):
    """forward(features (N,D) or (B,V,D), labels (N,)/(B,) or None)."""

    def __init__(self, temperature=0.07, base_temperature=0.07, reduction="mean",
                 normalize=False, backend="auto"):
        super().__init__(temperature=temperature, base_temperature=base_temperature,
                         reduction=reduction, normalize=normalize, backend=backend)

    def forward(self, features, labels=None):
        return F.supcon_loss(features, labels, **self.kwargs)


class NPairLoss(_LossModule):
    """forward(anchors (N,D), positives (N,D))."""

    def __init__(self, l2_reg=0.0, reduction="mean", backend="auto"):
        super().__init__(l2_reg=l2_reg, reduction=reduction, backend=backend)

    def forward(self, anchors, positives):
        return F.n_pair_loss(anchors, positives, **self.kwargs)


class TripletMarginLoss(_LossModule):
    """forward(embeddings (N,D), labels (N,))."""

    def __init__(self, margin=0.2, mining="batch_hard", squared=False, normalize=False,
                 reduction="mean", backend="auto"):
        super().__init__(margin=margin, mining=mining, squared=squared, normalize=normalize,
                         reduction=reduction, backend=backend)

    def forward(self, embeddings, labels):
        return F.triplet_margin_loss(embeddings, labels, **self.kwargs)


class ContrastiveLoss(_LossModule):
    """forward(embeddings (N,D), labels (N,))."""

    def __init__(self, margin=1.0, reduction="mean", backend="auto"):
        super().__init__(margin=margin, reduction=reduction, backend=backend)

    def forward(self, embeddings, labels):
        return F.contrastive_loss(embeddings, labels, **self.kwargs)
