"""The public functional API: validate, pick the backend in one place, compute.

Every function accepts ``backend`` ∈ {"auto", "torch", "triton", "cuda", "cpu"}; "torch"
is the reference that materializes the N×M logits, every other backend runs the tiled
kernels and never holds an N×M tensor. Half-precision inputs return a float32 loss;
float64 inputs return float64; gradients come back in the input dtype.

Under ``torch.autocast`` every loss computes as outside it (fp32 accumulation; the
reference in fp32 or wider, never in autocast's half precision) and accepts features of
mixed floating dtypes, as autocast produces them, by promoting them to the widest; the
gradient of each input still comes back in that input's dtype.
"""
from __future__ import annotations

import functools

import torch

from . import _validate as check
from . import dispatch, reference
from .losses import clip as clip_ops
from .losses import contrastive as contrastive_ops
from .distributed import losses as dist_losses
from .losses import info_nce as info_nce_ops
from .losses import multiple_negatives_ranking as mnrl_ops
from .losses import n_pair as n_pair_ops
from .losses import nt_xent as nt_xent_ops
from .losses import simcse as simcse_ops
from .losses import siglip as siglip_ops
from .losses import supcon as supcon_ops
from .losses import triplet as triplet_ops

TRIPLET_MINING = ("batch_hard", "batch_all", "semi_hard")


def _outside_autocast(fn):
    """Run a loss with autocast off on the features' device, promoting the floating
    feature tensors (dim ≥ 1) to their widest dtype when autocast was on."""
    @functools.wraps(fn)
    def loss(*args, **kwargs):
        tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
        if not tensors or not torch.is_autocast_enabled(tensors[0].device.type):
            return fn(*args, **kwargs)
        widest = _widest([t for t in tensors if t.dim() > 0 and t.is_floating_point()])
        args = [_promote(a, widest) for a in args]
        kwargs = {key: _promote(a, widest) for key, a in kwargs.items()}
        with torch.autocast(tensors[0].device.type, enabled=False):
            return fn(*args, **kwargs)
    return loss


def _widest(tensors):
    dtypes = {t.dtype for t in tensors}
    if {torch.float16, torch.bfloat16} <= dtypes:
        dtypes.add(torch.float32)  # neither half type holds the other
    for dtype in (torch.float64, torch.float32, torch.bfloat16, torch.float16):
        if dtype in dtypes:
            return dtype
    return None


def _promote(value, widest):
    if (widest is None or not isinstance(value, torch.Tensor) or value.dim() == 0
            or not value.is_floating_point() or value.dtype == widest):
        return value
    return value.to(widest)


@_outside_autocast
def info_nce(query, positive_key, negative_keys=None, temperature=0.1, reduction="mean",
             normalize=True, backend="auto", group=None, dist_mode="gather", tau_plus=0.0,
             beta=0.0):
    """InfoNCE (info-nce-pytorch, ``negative_mode="unpaired"``).

    query (N, D), positive_key (N, D), negative_keys (K, D) or None; temperature > 0.
    No negatives: in-batch, row i's candidates are all N keys, target i. With negatives:
    candidates are positive_key[i] and the K negatives. ``tau_plus`` (class prior, Chuang
    et al. 2020) and ``beta`` (hardness, Robinson et al. 2021) replace the negatives' sum
    by the authors' debiased / importance-weighted estimator (clamp included); 0 and 0 is
    plain InfoNCE. Returns a scalar, or (N,) for reduction="none".
    """
    check.features(query, "query")
    check.features(positive_key, "positive_key")
    check.same_kind(query, "query", positive_key, "positive_key")
    check.same_rows(query, "query", positive_key, "positive_key")
    if negative_keys is not None:
        check.features(negative_keys, "negative_keys")
        check.same_kind(query, "query", negative_keys, "negative_keys")
    check.scalar(temperature, "temperature", query.device, positive=True)
    check.reduction(reduction)
    check.estimator(tau_plus, beta, query.shape[0] - 1 if negative_keys is None
                    else negative_keys.shape[0], conflicts=(("group", group is not None),))
    impl = dispatch.select(backend, query.device, "info_nce")
    if group is not None:
        _distributed_ready(impl, group, dist_mode)
        return dist_losses.info_nce(query, positive_key, negative_keys, temperature, reduction,
                                      normalize, impl, group, dist_mode)
    if impl is None:
        return reference.info_nce(query, positive_key, negative_keys, temperature, reduction,
                                  normalize, tau_plus, beta)
    return info_nce_ops.info_nce(query, positive_key, negative_keys, temperature, reduction,
                                 normalize, impl, tau_plus, beta)


@_outside_autocast
def nt_xent_loss(z1, z2, temperature=0.1, reduction="mean", normalize=True, backend="auto",
                 group=None, dist_mode="gather", decoupled=False, positive_weight=None,
                 tau_plus=0.0, beta=0.0):
    """SimCLR NT-Xent. z1, z2 (N, D): two views, row i of z1 pairs with row i of z2.

    Over z = cat(z1, z2) (2N rows) with the own row excluded, target (i + N) mod 2N.
    ``decoupled=True`` (DCL, Yeh et al. 2022) also leaves the target out of the
    denominator; ``positive_weight`` (N,) (both views' rows alike) or (2N,) multiplies the
    target logit in the loss (DCLW's von Mises-Fisher weights). ``tau_plus`` (class
    prior; Chuang et al. 2020, debiased) and ``beta`` (hardness; Robinson et al. 2021)
    replace the sum over the 2N − 2 negatives by the authors' estimator, clamp at
    (2N − 2)·e^{−1/τ} included; 0 and 0 is plain NT-Xent. Returns a scalar (mean over 2N
    rows), or (2N,) for reduction="none".
    """
    check.features(z1, "z1")
    check.features(z2, "z2")
    check.same_kind(z1, "z1", z2, "z2")
    check.same_rows(z1, "z1", z2, "z2")
    check.scalar(temperature, "temperature", z1.device, positive=True)
    check.reduction(reduction)
    if positive_weight is not None:
        check.row_weights(positive_weight, "positive_weight", z1.shape[0], z1.device)
    check.estimator(tau_plus, beta, 2 * z1.shape[0] - 2,
                    conflicts=(("decoupled", decoupled),
                               ("positive_weight", positive_weight is not None),
                               ("group", group is not None)))
    impl = dispatch.select(backend, z1.device, "nt_xent_loss")
    if group is not None:
        _distributed_ready(impl, group, dist_mode)
        return dist_losses.nt_xent_loss(z1, z2, temperature, reduction, normalize, impl, group,
                                        dist_mode, decoupled, positive_weight)
    if impl is None:
        return reference.nt_xent_loss(z1, z2, temperature, reduction, normalize, decoupled,
                                      positive_weight, tau_plus, beta)
    return nt_xent_ops.nt_xent_loss(z1, z2, temperature, reduction, normalize, impl,
                                    decoupled, positive_weight, tau_plus, beta)


@_outside_autocast
def clip_loss(image_features, text_features, logit_scale, reduction="mean", normalize=False,
              backend="auto", group=None, dist_mode="gather"):
    """Symmetric CLIP loss (open_clip ``ClipLoss()(img, txt, logit_scale)``).

    image_features, text_features (N, D); logit_scale: float or 0-dim tensor, already
    exponentiated. Returns ½(mean row CE + mean column CE), or (N,) ½(row_i + col_i) for
    reduction="none".
    """
    check.features(image_features, "image_features")
    check.features(text_features, "text_features")
    check.same_kind(image_features, "image_features", text_features, "text_features")
    check.same_rows(image_features, "image_features", text_features, "text_features")
    check.scalar(logit_scale, "logit_scale", image_features.device)
    check.reduction(reduction)
    impl = dispatch.select(backend, image_features.device, "clip_loss")
    if group is not None:
        _distributed_ready(impl, group, dist_mode)
        return dist_losses.clip_loss(image_features, text_features, logit_scale,
                                       reduction, normalize, impl, group, dist_mode)
    if impl is None:
        return reference.clip_loss(image_features, text_features, logit_scale, reduction,
                                   normalize)
    return clip_ops.clip_loss(image_features, text_features, logit_scale, reduction, normalize,
                              impl)


@_outside_autocast
def siglip_loss(image_features, text_features, logit_scale, logit_bias, reduction="mean",
                normalize=False, backend="auto", group=None, dist_mode="gather"):
    """SigLIP pairwise sigmoid loss (open_clip ``SigLipLoss()`` on one process).

    image_features (N, D), text_features (N, D); logit_scale, logit_bias floats or 0-dim
    tensors. Returns (1/N)·Σ_ij −log σ(z_ij(logit_scale·⟨I_i,T_j⟩ + logit_bias)), or the
    (N,) row sums for reduction="none".
    """
    check.features(image_features, "image_features")
    check.features(text_features, "text_features")
    check.same_kind(image_features, "image_features", text_features, "text_features")
    check.same_rows(image_features, "image_features", text_features, "text_features")
    check.scalar(logit_scale, "logit_scale", image_features.device)
    check.scalar(logit_bias, "logit_bias", image_features.device)
    check.reduction(reduction)
    impl = dispatch.select(backend, image_features.device, "siglip_loss")
    if group is not None:
        _distributed_ready(impl, group, dist_mode)
        return dist_losses.siglip_loss(image_features, text_features, logit_scale,
                                         logit_bias, reduction, normalize, impl, group, dist_mode)
    if impl is None:
        return reference.siglip_loss(image_features, text_features, logit_scale, logit_bias,
                                     reduction, normalize)
    return siglip_ops.siglip_loss(image_features, text_features, logit_scale, logit_bias,
                                  reduction, normalize, impl)


@_outside_autocast
def simcse_unsup_loss(y_pred, lamda=0.05, reduction="mean", backend="auto"):
    """Unsupervised SimCSE. y_pred (N, D), N even: rows 2k and 2k+1 are two dropout views
    of one sentence. Cosine / lamda with the own row excluded. Returns a scalar (mean over
    N rows), or (N,) for reduction="none"."""
    check.features(y_pred, "y_pred")
    if y_pred.shape[0] % 2:
        raise ValueError(f"y_pred must have an even number of rows (pairs 2k, 2k+1), got "
                         f"{y_pred.shape[0]}")
    check.scalar(lamda, "lamda", y_pred.device, positive=True)
    check.reduction(reduction)
    impl = dispatch.select(backend, y_pred.device, "simcse_unsup_loss")
    if impl is None:
        return reference.simcse_unsup_loss(y_pred, lamda, reduction)
    return simcse_ops.simcse_unsup_loss(y_pred, lamda, reduction, impl)


@_outside_autocast
def simcse_sup_loss(y_pred, lamda=0.05, reduction="mean", backend="auto"):
    """Supervised SimCSE. y_pred (3B, D) as triplets (anchor 3k, positive 3k+1, hard
    negative 3k+2). Anchors against every non-anchor row; target of anchor k is column 2k.
    Returns a scalar (mean over B anchors), or (B,) for reduction="none"."""
    check.features(y_pred, "y_pred")
    if y_pred.shape[0] % 3:
        raise ValueError(f"y_pred must have a multiple of 3 rows (anchor, positive, hard "
                         f"negative), got {y_pred.shape[0]}")
    check.scalar(lamda, "lamda", y_pred.device, positive=True)
    check.reduction(reduction)
    impl = dispatch.select(backend, y_pred.device, "simcse_sup_loss")
    if impl is None:
        return reference.simcse_sup_loss(y_pred, lamda, reduction)
    return simcse_ops.simcse_sup_loss(y_pred, lamda, reduction, impl)


@_outside_autocast
def supcon_loss(features, labels=None, temperature=0.07, base_temperature=0.07,
                reduction="mean", normalize=False, backend="auto", group=None,
                dist_mode="gather"):
    """Supervised contrastive loss (Khosla et al. L_out; SupContrast ``contrast_mode="all"``).

    features (N, D) or (B, V, D) (views flattened view-major); labels (N,) / (B,) integers,
    or None (each sample its own class). Anchors without a positive are left out of the
    mean (0 if no anchor has one). Returns a scalar, or (N,) / (V·B,) for "none" (0 for
    anchors without a positive). Features are used as given unless normalize=True.
    """
    check.features(features, "features", ndims=(2, 3))
    if labels is not None:
        check.labels(labels, "labels", features.shape[0], features.device)
    check.scalar(temperature, "temperature", features.device, positive=True)
    check.scalar(base_temperature, "base_temperature", features.device, positive=True)
    check.reduction(reduction)
    impl = dispatch.select(backend, features.device, "supcon_loss")
    if group is not None:
        _distributed_ready(impl, group, dist_mode)
        return dist_losses.supcon_loss(features, labels, temperature, base_temperature,
                                         reduction, normalize, impl, group, dist_mode)
    if impl is None:
        return reference.supcon_loss(features, labels, temperature, base_temperature,
                                     reduction, normalize)
    return supcon_ops.supcon_loss(features, labels, temperature, base_temperature, reduction,
                                  normalize, impl)


@_outside_autocast
def n_pair_loss(anchors, positives, l2_reg=0.0, reduction="mean", backend="auto"):
    """Sohn's multi-class N-pair loss. anchors, positives (N, D); raw dot products, CE with
    targets arange, plus l2_reg·mean_i(‖a_i‖² + ‖p_i‖²). Returns a scalar, or (N,) for
    reduction="none" (CE_i + l2_reg·(‖a_i‖² + ‖p_i‖²))."""
    check.features(anchors, "anchors")
    check.features(positives, "positives")
    check.same_kind(anchors, "anchors", positives, "positives")
    check.same_rows(anchors, "anchors", positives, "positives")
    check.scalar(l2_reg, "l2_reg", anchors.device)
    check.reduction(reduction)
    impl = dispatch.select(backend, anchors.device, "n_pair_loss")
    if impl is None:
        return reference.n_pair_loss(anchors, positives, l2_reg, reduction)
    return n_pair_ops.n_pair_loss(anchors, positives, l2_reg, reduction, impl)


@_outside_autocast
def triplet_margin_loss(embeddings, labels, margin=0.2, mining="batch_hard", squared=False,
                        normalize=False, reduction="mean", backend="auto"):
    """Triplet margin loss over the batch's triplets (a, p, n): label(a) = label(p) ≠
    label(n), a ≠ p; d Euclidean (squared if ``squared``, rows L2-normalized first if
    ``normalize``). embeddings (N, D), labels (N,) integers.

    ``mining``:
    - "batch_hard" (Hermans et al.): per anchor relu(max_p d(a,p) − min_n d(a,n) + margin);
      "mean" over the anchors that have a positive and a negative.
    - "batch_all": relu(d(a,p) − d(a,n) + margin) over every triplet; "mean" over the
      triplets where it is positive (pytorch-metric-learning's TripletMarginLoss with
      AvgNonZeroReducer, sentence-transformers' BatchAllTripletLoss).
    - "semi_hard" (FaceNet): per positive pair, the nearest negative farther than the
      positive, else the farthest negative; "mean" over all positive pairs
      (sentence-transformers' BatchSemiHardTripletLoss).
    Returns a scalar, or (N,) for reduction="none" (the anchor's loss, or the sum over its
    triplets / positive pairs). A mean with nothing to average is 0."""
    check.features(embeddings, "embeddings")
    check.labels(labels, "labels", embeddings.shape[0], embeddings.device)
    check.scalar(margin, "margin", embeddings.device, non_negative=True)
    check.choice(mining, "mining", TRIPLET_MINING)
    check.reduction(reduction)
    impl = dispatch.select(backend, embeddings.device, "triplet_margin_loss")
    if impl is None:
        return reference.triplet_margin_loss(embeddings, labels, margin, mining, squared,
                                             normalize, reduction)
    return triplet_ops.triplet_margin_loss(embeddings, labels, margin, squared, normalize,
                                           reduction, impl, mining)


@_outside_autocast
def contrastive_loss(embeddings, labels, margin=1.0, reduction="mean", backend="auto"):
    """Pairwise margin contrastive loss (Hadsell et al.). embeddings (N, D), N ≥ 2; labels
    (N,) integers. Mean over ordered pairs i≠j of d² (same label) or relu(margin − d)².
    Returns a scalar, or (N,) per-anchor means for reduction="none"."""
    check.features(embeddings, "embeddings")
    if embeddings.shape[0] < 2:
        raise ValueError("embeddings needs at least 2 rows: the loss is over pairs i≠j")
    check.labels(labels, "labels", embeddings.shape[0], embeddings.device)
    check.scalar(margin, "margin", embeddings.device, non_negative=True)
    check.reduction(reduction)
    impl = dispatch.select(backend, embeddings.device, "contrastive_loss")
    if impl is None:
        return reference.contrastive_loss(embeddings, labels, margin, reduction)
    return contrastive_ops.contrastive_loss(embeddings, labels, margin, reduction, impl)


@_outside_autocast
def multiple_negatives_ranking_loss(queries, docs, *hard_negatives, scale=20.0,
                                    normalize=True, directions=("query_to_doc",),
                                    partition_mode="joint", hardness_mode=None,
                                    hardness_strength=0.0, reduction="mean", backend="auto",
                                    group=None, dist_mode="gather"):
    """Multiple-negatives ranking loss (sentence-transformers' MNRL, also SimCSE's).

    queries (N, D), docs (N, D) (row i is query i's positive), hard_negatives: any number
    of (N, D) columns (row i of each is a hard negative of query i; every column is a
    candidate of every query). Logits are scale·cos (scale·dot when not normalize).
    directions ⊆ {"query_to_doc", "query_to_query", "doc_to_query", "doc_to_doc"} (must
    hold "query_to_doc") pick the candidate sets; partition_mode "joint" is one softmax
    over their union, "per_direction" averages the sets' log-partition functions
    (query_to_doc and doc_to_query only). hardness_mode ("in_batch_negatives",
    "hard_negatives", "all_negatives" or None) adds hardness_strength·stop_grad(cos) to
    those negatives' query_to_doc logits. Returns a scalar, or (N,) for reduction="none".
    With ``group`` each rank passes its rows and gets its queries' loss against every
    rank's candidates (SPEC §3; dist_mode "gather" only).
    """
    check.features(queries, "queries")
    for name, x in (("docs", docs), *((f"hard_negatives[{i}]", h)
                                       for i, h in enumerate(hard_negatives))):
        check.features(x, name)
        check.same_kind(queries, "queries", x, name)
        check.same_rows(queries, "queries", x, name)
    check.scalar(scale, "scale", queries.device, positive=True)
    check.scalar(hardness_strength, "hardness_strength", queries.device, non_negative=True)
    check.mnrl_options(directions, partition_mode, hardness_mode)
    check.reduction(reduction)
    impl = dispatch.select(backend, queries.device, "multiple_negatives_ranking_loss")
    all_docs = [docs, *hard_negatives]
    options = dict(scale=scale, directions=tuple(directions), partition_mode=partition_mode,
                   hardness_mode=hardness_mode, hardness_strength=hardness_strength,
                   reduction=reduction, normalize=normalize)
    if group is not None:
        _distributed_ready(impl, group, dist_mode)
        if dist_mode != "gather":
            raise ValueError("multiple_negatives_ranking_loss: dist_mode must be 'gather' "
                             f"(its candidate sets are gathered), got {dist_mode!r}")
        return dist_losses.multiple_negatives_ranking_loss(queries, all_docs, impl=impl,
                                                           group=group, **options)
    if impl is None:
        return reference.multiple_negatives_ranking_loss(queries, all_docs, **options)
    return mnrl_ops.multiple_negatives_ranking_loss(queries, all_docs, impl=impl, **options)


def _distributed_ready(impl, group, dist_mode) -> None:
    """Checks for group= / dist_mode= (SPEC §3)."""
    import torch.distributed as dist
    from .distributed import DIST_MODES
    if dist_mode not in DIST_MODES:
        raise ValueError(f"dist_mode must be one of {DIST_MODES}, got {dist_mode!r}")
    if not dist.is_available() or not dist.is_initialized():
        raise ValueError("group= needs torch.distributed initialized "
                         "(torch.distributed.init_process_group)")
    if impl is None:
        raise ValueError("group= runs on the tiled kernels; backend='torch' (the reference) "
                         "has no distributed mode — use 'auto' or a kernel backend")
