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

    def __init__(self, temperature=0.1, reduction="mean", normalize=True, backend="auto",
                 group=None, dist_mode="gather", tau_plus=0.0, beta=0.0):
        super().__init__(temperature=temperature, reduction=reduction, normalize=normalize,
                         backend=backend, group=group, dist_mode=dist_mode,
                         tau_plus=tau_plus, beta=beta)

    def forward(self, query, positive_key, negative_keys=None):
        return F.info_nce(query, positive_key, negative_keys, **self.kwargs)


class NTXentLoss(_LossModule):
    """forward(z1 (N,D), z2 (N,D), positive_weight=None ((N,) or (2N,)))."""

    def __init__(self, temperature=0.1, reduction="mean", normalize=True, backend="auto",
                 group=None, dist_mode="gather", decoupled=False, tau_plus=0.0, beta=0.0):
        super().__init__(temperature=temperature, reduction=reduction, normalize=normalize,
                         backend=backend, group=group, dist_mode=dist_mode,
                         decoupled=decoupled, tau_plus=tau_plus, beta=beta)

    def forward(self, z1, z2, positive_weight=None):
        return F.nt_xent_loss(z1, z2, positive_weight=positive_weight, **self.kwargs)


def _world_group(world_size: int, rank: int, loss: str):
    """open_clip's (rank, world_size) arguments as a group: the default one when
    world_size > 1 (checked against torch.distributed), None for one process."""
    if world_size <= 1:
        return None
    import torch.distributed as dist
    if not dist.is_available() or not dist.is_initialized():
        raise ValueError(f"{loss}(world_size={world_size}) needs torch.distributed "
                         "initialized (torch.distributed.init_process_group)")
    if dist.get_world_size() != world_size or dist.get_rank() != rank:
        raise ValueError(f"{loss}: rank={rank}, world_size={world_size} disagree with "
                         f"torch.distributed (rank {dist.get_rank()} of "
                         f"{dist.get_world_size()})")
    return dist.group.WORLD


class ClipLoss(_LossModule):
    """forward(image_features (N,D), text_features (N,D), logit_scale).

    Also an open_clip drop-in: ``ClipLoss(local_loss=True, gather_with_grad=True,
    cache_labels=..., rank=r, world_size=W)`` is the distributed loss of SPEC §3 on the
    default group (open_clip's other combinations, which average a different quantity,
    are refused rather than silently changed). ``group=`` / ``dist_mode=`` select a group
    and "gather" or "ring" directly.
    """

    def __init__(self, local_loss=False, gather_with_grad=False, cache_labels=False, rank=0,
                 world_size=1, use_horovod=False, reduction="mean", normalize=False,
                 backend="auto", group=None, dist_mode="gather"):
        if use_horovod:
            raise ValueError("ClipLoss: horovod is not supported; use torch.distributed")
        if world_size > 1 and not (local_loss and gather_with_grad):
            raise ValueError("ClipLoss: with world_size > 1 only local_loss=True, "
                             "gather_with_grad=True is supported (SPEC §3)")
        group = group if group is not None else _world_group(world_size, rank, "ClipLoss")
        super().__init__(reduction=reduction, normalize=normalize, backend=backend,
                         group=group, dist_mode=dist_mode)

    def forward(self, image_features, text_features, logit_scale, output_dict=False):
        loss = F.clip_loss(image_features, text_features, logit_scale, **self.kwargs)
        return {"contrastive_loss": loss} if output_dict else loss


class SigLipLoss(_LossModule):
    """forward(image_features (N,D), text_features (N,D), logit_scale, logit_bias).

    open_clip drop-in: ``SigLipLoss(cache_labels=..., rank=r, world_size=W)`` runs the
    distributed loss on the default group ("ring" by default, as open_clip's neighbour
    exchange; every rank's loss is its images against all texts)."""

    def __init__(self, cache_labels=False, rank=0, world_size=1, dist_impl=None,
                 reduction="mean", normalize=False, backend="auto", group=None,
                 dist_mode=None):
        group = group if group is not None else _world_group(world_size, rank, "SigLipLoss")
        mode = dist_mode or ("gather" if dist_impl == "gather" else "ring")
        super().__init__(reduction=reduction, normalize=normalize, backend=backend,
                         group=group, dist_mode=mode)

    def forward(self, image_features, text_features, logit_scale, logit_bias,
                output_dict=False):
        loss = F.siglip_loss(image_features, text_features, logit_scale, logit_bias,
                             **self.kwargs)
        return {"contrastive_loss": loss} if output_dict else loss


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
                 normalize=False, backend="auto", group=None, dist_mode="gather"):
        super().__init__(temperature=temperature, base_temperature=base_temperature,
                         reduction=reduction, normalize=normalize, backend=backend,
                         group=group, dist_mode=dist_mode)

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


class MultipleNegativesRankingLoss(_LossModule):
    """forward(queries (N,D), docs (N,D), *hard_negatives (N,D) each)."""

    def __init__(self, scale=20.0, normalize=True, directions=("query_to_doc",),
                 partition_mode="joint", hardness_mode=None, hardness_strength=0.0,
                 reduction="mean", backend="auto", group=None):
        super().__init__(scale=scale, normalize=normalize, directions=directions,
                         partition_mode=partition_mode, hardness_mode=hardness_mode,
                         hardness_strength=hardness_strength, reduction=reduction,
                         backend=backend, group=group)

    def forward(self, queries, docs, *hard_negatives):
        return F.multiple_negatives_ranking_loss(queries, docs, *hard_negatives, **self.kwargs)
