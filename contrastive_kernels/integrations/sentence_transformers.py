"""sentence-transformers drop-ins whose loss runs on the tiled engine.

    from contrastive_kernels.integrations.sentence_transformers import (
        MultipleNegativesRankingLoss)                   # was: from sentence_transformers.losses

Each class subclasses sentence-transformers' own (6.x), so the constructor, its defaults
and validation errors, ``forward(sentence_features, labels)``, ``get_config_dict``, the
citation and the model card are theirs; only the loss computation differs: it calls
:func:`contrastive_kernels.multiple_negatives_ranking_loss`, which never holds the
(N, (1+h)·N) similarity matrix. ``similarity_fct`` must be ``util.cos_sim`` or
``util.dot_score``; any other function falls back to sentence-transformers' own
computation with a warning. ``gather_across_devices=True`` uses this library's gathered
distributed mode on the default process group. An extra keyword, ``backend``, picks the
kernel backend (default "auto").

sentence-transformers is imported when this module is; ``import contrastive_kernels`` never
imports it (``pip install contrastive_kernels[sentence-transformers]``).
"""
from __future__ import annotations

import warnings

import torch

try:
    from sentence_transformers.sentence_transformer import losses as _st_losses
    from sentence_transformers.util import cos_sim, dot_score
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("contrastive_kernels.integrations.sentence_transformers needs "
                      "sentence-transformers>=6: pip install "
                      "'contrastive_kernels[sentence-transformers]'") from exc

from .. import functional as F

__all__ = ["MultipleNegativesRankingLoss", "MultipleNegativesSymmetricRankingLoss",
           "CachedMultipleNegativesRankingLoss", "BatchAllTripletLoss",
           "BatchSemiHardTripletLoss"]


def fused_normalize(similarity_fct) -> bool | None:
    """True for cosine, False for dot product, None for a similarity the engine lacks."""
    if similarity_fct is cos_sim:
        return True
    if similarity_fct is dot_score:
        return False
    return None


def _process_group():
    """The default group when sentence-transformers would gather, else None (as its
    all_gather returns the local tensor without an initialized process group)."""
    dist = torch.distributed
    return dist.group.WORLD if dist.is_available() and dist.is_initialized() else None


def _warn_fallback_once(loss, setting: str, value, why: str) -> None:
    """Warn (once per loss instance) that ``setting`` makes the loss fall back to
    sentence-transformers' own computation."""
    if not getattr(loss, "_warned_fallback", False):
        name = getattr(value, "__name__", repr(value))
        warnings.warn(f"{type(loss).__name__}: {setting}={name} is {why}; computing the "
                      "loss with sentence-transformers' own (materialized) code",
                      stacklevel=4)
        loss._warned_fallback = True


class _FusedRanking:
    """compute_loss_from_embeddings on the tiled engine, for a sentence-transformers
    MultipleNegativesRankingLoss subclass (which holds the hyperparameters)."""

    backend = "auto"

    def compute_loss_from_embeddings(self, embeddings: list[torch.Tensor],
                                     labels: torch.Tensor | None) -> torch.Tensor:
        """embeddings: [queries (N, D), positives (N, D), *hard-negative columns (N, D)];
        labels are ignored (as sentence-transformers does). Returns the mean loss."""
        if len(embeddings) < 2:
            raise ValueError(f"Expected at least 2 embeddings, got {len(embeddings)}")
        normalize = fused_normalize(self.similarity_fct)
        if normalize is None:
            self._warn_fallback()
            return super().compute_loss_from_embeddings(embeddings, labels)
        group = _process_group() if self.gather_across_devices else None
        return F.multiple_negatives_ranking_loss(
            embeddings[0], *embeddings[1:], scale=self.scale, normalize=normalize,
            directions=self.directions, partition_mode=self.partition_mode,
            hardness_mode=self.hardness_mode, hardness_strength=self.hardness_strength,
            backend=self.backend, group=group)

    def _warn_fallback(self) -> None:
        _warn_fallback_once(self, "similarity_fct", self.similarity_fct,
                            "neither util.cos_sim nor util.dot_score")


class MultipleNegativesRankingLoss(_FusedRanking, _st_losses.MultipleNegativesRankingLoss):
    """sentence-transformers' MultipleNegativesRankingLoss (same arguments) on the tiled
    engine; ``backend`` picks the kernel backend."""

    def __init__(self, model, scale: float = 20.0, similarity_fct=cos_sim,
                 gather_across_devices: bool = False, directions=("query_to_doc",),
                 partition_mode="joint", hardness_mode=None, hardness_strength: float = 0.0,
                 backend: str = "auto") -> None:
        super().__init__(model, scale=scale, similarity_fct=similarity_fct,
                         gather_across_devices=gather_across_devices, directions=directions,
                         partition_mode=partition_mode, hardness_mode=hardness_mode,
                         hardness_strength=hardness_strength)
        self.backend = backend


# Subclassing sentence-transformers' deprecated class warns at class creation, i.e. on
# importing this module; instantiating it still warns, as theirs does.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)

    class MultipleNegativesSymmetricRankingLoss(_FusedRanking,
                                                _st_losses.MultipleNegativesSymmetricRankingLoss):
        """sentence-transformers' MultipleNegativesSymmetricRankingLoss (query→doc and
        doc→query, per-direction partitions) on the tiled engine."""

        def __init__(self, model, scale: float = 20.0, similarity_fct=cos_sim,
                     gather_across_devices: bool = False, backend: str = "auto") -> None:
            super().__init__(model, scale=scale, similarity_fct=similarity_fct,
                             gather_across_devices=gather_across_devices)
            self.backend = backend


class CachedMultipleNegativesRankingLoss(_st_losses.CachedMultipleNegativesRankingLoss):
    """sentence-transformers' CachedMultipleNegativesRankingLoss (gradient caching, each
    mini-batch's random state replayed) whose loss stage is one fused call over the whole
    batch instead of mini-batches of materialized similarity rows."""

    def __init__(self, model, scale: float = 20.0, similarity_fct=cos_sim,
                 mini_batch_size: int = 32, mini_batch_num_tokens: int | None = None,
                 gather_across_devices: bool = False, directions=("query_to_doc",),
                 partition_mode="joint", show_progress_bar: bool = False,
                 hardness_mode=None, hardness_strength: float = 0.0,
                 backend: str = "auto") -> None:
        super().__init__(model, scale=scale, similarity_fct=similarity_fct,
                         mini_batch_size=mini_batch_size,
                         mini_batch_num_tokens=mini_batch_num_tokens,
                         gather_across_devices=gather_across_devices, directions=directions,
                         partition_mode=partition_mode, show_progress_bar=show_progress_bar,
                         hardness_mode=hardness_mode, hardness_strength=hardness_strength)
        # The wrapped loss (validated above by sentence-transformers' own) becomes ours.
        self.loss = MultipleNegativesRankingLoss(
            model, scale=scale, similarity_fct=similarity_fct,
            gather_across_devices=gather_across_devices, directions=directions,
            partition_mode=partition_mode, hardness_mode=hardness_mode,
            hardness_strength=hardness_strength, backend=backend)

    def calculate_loss(self, reps: list[list[torch.Tensor]], labels=None, *,
                       with_backward: bool = False) -> torch.Tensor:
        """reps[c][m]: column c's mini-batch m embeddings (leaves). One fused loss over
        the whole batch; with_backward leaves d loss / d rep on every rep."""
        if fused_normalize(self.similarity_fct) is None:
            self.loss._warn_fallback()
            return super().calculate_loss(reps, labels, with_backward=with_backward)
        embeddings = [torch.cat(column) for column in reps]
        loss = self.loss.compute_loss_from_embeddings(embeddings, labels)
        if with_backward:
            loss.backward()
            loss = loss.detach()
        return loss


def fused_squared(distance_metric) -> bool | None:
    """False for sentence-transformers' Euclidean distance, True for it with
    ``squared=True`` (a functools.partial), None for a distance the strips lack."""
    euclidean = {_st_losses.BatchHardTripletLossDistanceFunction.euclidean_distance,
                 _st_losses.BatchHardTripletLossDistanceFunction.eucledian_distance}
    if distance_metric in euclidean:
        return False
    func = getattr(distance_metric, "func", None)
    keywords = getattr(distance_metric, "keywords", None) or {}
    if func in euclidean and not getattr(distance_metric, "args", ()) \
            and set(keywords) <= {"squared"}:
        return bool(keywords.get("squared", False))
    return None


_EUCLIDEAN = _st_losses.BatchHardTripletLossDistanceFunction.euclidean_distance


class _FusedTriplets:
    """compute_loss_from_embeddings on the distance strips, for a sentence-transformers
    batch triplet loss subclass (which holds the margin, under ``margin_attribute``, and
    the distance)."""

    backend = "auto"
    mining = "batch_all"
    margin_attribute = "margin"

    def __init__(self, model, distance_metric=_EUCLIDEAN, margin: float = 5,
                 backend: str = "auto") -> None:
        super().__init__(model, distance_metric=distance_metric, margin=margin)
        self.backend = backend

    def compute_loss_from_embeddings(self, embeddings: list[torch.Tensor],
                                     labels: torch.Tensor) -> torch.Tensor:
        """embeddings: [reps (N, D)]; labels (N,) integer classes. Returns the mean."""
        squared = fused_squared(self.distance_metric)
        if squared is None:
            self._warn_fallback()
            return super().compute_loss_from_embeddings(embeddings, labels)
        reps = embeddings[0]
        if labels.numel() != reps.shape[0]:
            raise ValueError(f"{type(self).__name__} expects {reps.shape[0]} labels (one per "
                             f"example), but got {labels.numel()} labels with shape "
                             f"{tuple(labels.shape)}.")
        return F.triplet_margin_loss(reps, labels.view(-1).to(reps.device),
                                     getattr(self, self.margin_attribute), mining=self.mining,
                                     squared=squared, backend=self.backend)

    def _warn_fallback(self) -> None:
        _warn_fallback_once(self, "distance_metric", self.distance_metric,
                            "not the Euclidean distance")


class BatchAllTripletLoss(_FusedTriplets, _st_losses.BatchAllTripletLoss):
    """sentence-transformers' BatchAllTripletLoss(model, distance_metric, margin=5) on the
    strips: the mean of relu(d_ap − d_an + margin) over the triplets where it is
    positive; ``backend`` picks the kernel backend."""

    mining = "batch_all"
    margin_attribute = "triplet_margin"


class BatchSemiHardTripletLoss(_FusedTriplets, _st_losses.BatchSemiHardTripletLoss):
    """sentence-transformers' BatchSemiHardTripletLoss(model, distance_metric, margin=5)
    on the strips: per positive pair the nearest negative farther than the positive, else
    the farthest negative; the mean over all positive pairs."""

    mining = "semi_hard"
