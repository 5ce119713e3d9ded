"""A pytorch-metric-learning drop-in whose batch-all triplet loss runs on the strips.

    from contrastive_kernels.integrations.pytorch_metric_learning import TripletMarginLoss
                                                    # was: from pytorch_metric_learning.losses

``TripletMarginLoss`` subclasses pytorch-metric-learning's own (2.x): same constructor,
defaults (margin 0.05, ``LpDistance()`` on L2-normalized embeddings, ``AvgNonZeroReducer``)
and ``forward(embeddings, labels, indices_tuple=None, ref_emb=None, ref_labels=None)``.
In its default configuration (every triplet, Euclidean or squared Euclidean
``LpDistance``, normalized or not, mean over the triplets with a positive loss) the loss
is :func:`contrastive_kernels.triplet_margin_loss` with ``mining="batch_all"``, which never
enumerates the triplets (pytorch-metric-learning builds index lists of all of them, N³ at
worst). Anything else (``swap``, ``smooth_loss``, a number of ``triplets_per_anchor``,
another distance or reducer, an embedding regularizer, ``indices_tuple`` from a miner,
``ref_emb``) falls back to pytorch-metric-learning's own computation with a warning. An
extra keyword, ``backend``, picks the kernel backend (default "auto").

pytorch-metric-learning is imported when this module is; ``import contrastive_kernels``
never imports it (``pip install contrastive_kernels[pytorch-metric-learning]``).
"""
from __future__ import annotations

import warnings

try:
    from pytorch_metric_learning import losses as _pml_losses
    from pytorch_metric_learning.distances import LpDistance
    from pytorch_metric_learning.reducers import AvgNonZeroReducer
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("contrastive_kernels.integrations.pytorch_metric_learning needs "
                      "pytorch-metric-learning>=2: pip install "
                      "'contrastive_kernels[pytorch-metric-learning]'") from exc

from .. import functional as F

__all__ = ["TripletMarginLoss"]


class TripletMarginLoss(_pml_losses.TripletMarginLoss):
    """pytorch-metric-learning's TripletMarginLoss (same arguments); its default
    configuration on the batch-all strips. ``backend`` picks the kernel backend."""

    def __init__(self, margin=0.05, swap=False, smooth_loss=False, triplets_per_anchor="all",
                 backend: str = "auto", **kwargs):
        super().__init__(margin=margin, swap=swap, smooth_loss=smooth_loss,
                         triplets_per_anchor=triplets_per_anchor, **kwargs)
        self.backend = backend

    def forward(self, embeddings, labels=None, indices_tuple=None, ref_emb=None,
                ref_labels=None):
        """embeddings (N, D), labels (N,) integers. Returns the mean over the triplets
        whose loss is positive (0 if none), a 0-dim tensor."""
        why = self._unfused_reason(labels, indices_tuple, ref_emb, ref_labels)
        if why is not None:
            self._warn_fallback(why)
            return super().forward(embeddings, labels, indices_tuple, ref_emb, ref_labels)
        self.reset_stats()
        return F.triplet_margin_loss(embeddings, labels.to(embeddings.device), self.margin,
                                     mining="batch_all", squared=self.distance.power == 2,
                                     normalize=self.distance.normalize_embeddings,
                                     backend=self.backend)

    def _unfused_reason(self, labels, indices_tuple, ref_emb, ref_labels) -> str | None:
        """Why this call cannot take the fused path, or None."""
        dist, reducer = self.distance, self.reducer
        checks = [
            (labels is None, "no labels"),
            (indices_tuple is not None, "indices_tuple (a miner's triplets)"),
            (ref_emb is not None or ref_labels is not None, "ref_emb"),
            (self.swap, "swap=True"),
            (self.smooth_loss, "smooth_loss=True"),
            (self.triplets_per_anchor != "all", "triplets_per_anchor != 'all'"),
            (self.embedding_regularizer is not None, "an embedding regularizer"),
            (type(dist) is not LpDistance or dist.p != 2 or dist.power not in (1, 2)
             or dist.is_inverted, f"distance {dist!r} (LpDistance p=2, power 1 or 2 fuse)"),
            (type(reducer) is not AvgNonZeroReducer or reducer.low != 0
             or reducer.high is not None, f"reducer {reducer!r}"),
        ]
        return next((why for bad, why in checks if bad), None)

    def _warn_fallback(self, why: str) -> None:
        if getattr(self, "_warned_fallback", None) != why:
            warnings.warn(f"TripletMarginLoss: {why}; computing the loss with "
                          "pytorch-metric-learning's own (enumerated) code", stacklevel=3)
            self._warned_fallback = why
