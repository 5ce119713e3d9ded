"""Pure-PyTorch reference implementations of the ten losses of SPEC §2.

These are the test oracle and the ``backend="torch"`` path. They are written
straight from the definitions and materialize the full N×M (or N×N) logits or
distance matrix; the tiled backends must agree with them.

Shared conventions (SPEC §1):

* No input validation here: the public wrappers validate before calling in.
* float16 / bfloat16 inputs are upcast to float32 before any arithmetic, so the
  loss is float32 and autograd hands gradients back in the input dtype;
  float32 and float64 inputs compute in their own dtype.
* Scalar hyper-parameters (``temperature``, ``logit_scale``, ``logit_bias``,
  ``margin``, ``lamda``, ``l2_reg``, ``base_temperature``) may be Python floats
  or 0-dim tensors; tensors are used as-is, so they keep their autograd graph.
* Every loss builds one per-anchor vector (what ``reduction="none"`` returns)
  and reduces it with :func:`reduce_rows`, so ``"mean"``/``"sum"`` always equal the
  mean/sum of the ``"none"`` vector over the anchors that count.
* Excluded positions are masked with ``-inf`` (never large finite constants),
  and excluded anchors are zeroed with ``torch.where`` so no ``0 * inf`` NaN
  can leak into values or gradients.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "info_nce",
    "nt_xent_loss",
    "clip_loss",
    "siglip_loss",
    "simcse_unsup_loss",
    "simcse_sup_loss",
    "supcon_loss",
    "n_pair_loss",
    "triplet_margin_loss",
    "contrastive_loss",
    "multiple_negatives_ranking_loss",
    "REFERENCE_LOSSES",
]

_HALF_DTYPES = (torch.float16, torch.bfloat16)
_NORM_EPS = 1e-12


# --------------------------------------------------------------------------- #
# helpers
# --------------------------------------------------------------------------- #
def _upcast(x: torch.Tensor) -> torch.Tensor:
    """Half inputs are accumulated in fp32 (SPEC §1); fp32/fp64 stay as they are."""
    return x.float() if x.dtype in _HALF_DTYPES else x


def _prep(x: torch.Tensor, normalize: bool) -> torch.Tensor:
    """Upcast, then optionally L2-normalize rows with the F.normalize rule."""
    x = _upcast(x)
    return F.normalize(x, dim=-1, eps=_NORM_EPS) if normalize else x


def reduce_rows(vec: torch.Tensor, reduction: str, valid: torch.Tensor | None = None):
    """Reduce a per-anchor loss vector.

    ``valid`` (bool, same shape) marks the anchors that count; excluded anchors
    must already hold 0 in ``vec``. The mean divides by the number of valid
    anchors, clamped to 1 so that "no valid anchor" gives an exact 0 that is
    still attached to the graph (zero gradient, never NaN).
    """
    if reduction == "none":
        return vec
    if reduction == "sum":
        return vec.sum()
    if reduction == "mean":
        if valid is None:
            return vec.mean()
        return vec.sum() / valid.sum().clamp_min(1)
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def _eye(n: int, device) -> torch.Tensor:
    return torch.eye(n, dtype=torch.bool, device=device)


def _pairwise_sq_dist(x: torch.Tensor) -> torch.Tensor:
    """[N, D] -> [N, N] squared Euclidean distances, accurate for every pair.

    The Gram form ‖a‖² + ‖b‖² − 2⟨a, b⟩ (one matrix product, so the reference scales to
    the benchmark sizes) loses its relative accuracy where points nearly coincide; those
    pairs (d² ≤ ‖a‖²+‖b‖² / 1024, always including the diagonal) are recomputed from the
    explicit difference, which makes the diagonal and duplicate rows exactly 0.
    """
    sq = x.pow(2).sum(dim=1)
    norms = sq[:, None] + sq[None, :]
    gram = (norms - 2 * (x @ x.T)).clamp_min(0)
    near = gram <= norms * NEAR_COINCIDENT
    i, j = near.nonzero(as_tuple=True)
    exact = (x.index_select(0, i) - x.index_select(0, j)).pow(2).sum(dim=1)
    return gram.index_put((i, j), exact)


# The fraction of ‖a‖² + ‖b‖² below which a squared distance is recomputed from the
# difference (csrc/tile_math.h kCoincident; the kernels use the same rule).
NEAR_COINCIDENT = 1.0 / 1024


def _safe_sqrt(d2: torch.Tensor) -> torch.Tensor:
    """sqrt whose value and gradient are 0 where d2 == 0 (plain sqrt has an
    infinite gradient there). NaN is not == 0, so NaN still propagates."""
    zero = d2 == 0
    return torch.where(zero, torch.zeros_like(d2), torch.where(zero, torch.ones_like(d2), d2).sqrt())


# --------------------------------------------------------------------------- #
# losses
# --------------------------------------------------------------------------- #
def info_nce(query, positive_key, negative_keys=None, temperature=0.1, reduction="mean", normalize=True,
             tau_plus=0.0, beta=0.0):
    """InfoNCE, equal to info-nce-pytorch ``info_nce(..., negative_mode="unpaired")``.

    Shapes: ``query`` [N, D], ``positive_key`` [N, D] (M = N), optional
    ``negative_keys`` [K, D].

    * No negatives (in-batch): logits = q̂ k̂ᵀ / τ  ([N, N]), target of row i is i.
    * With negatives: row i is [⟨q̂_i, k̂_i⟩, q̂_i n̂ᵀ] / τ  ([N, 1 + K]), target 0;
      other in-batch keys are not candidates.

    ``reduction="none"`` returns the [N] per-query cross-entropies. ``tau_plus``/``beta``
    (not both 0): the debiased / hard-negative estimator (:func:`_hard_negative_rows`)
    over the other in-batch keys, or over the bank.
    """
    q = _prep(query, normalize)
    k = _prep(positive_key, normalize)
    if tau_plus or beta:
        positive = (q * k).sum(-1) / temperature
        if negative_keys is None:
            off = ~_eye(q.shape[0], q.device)
            negatives = (q @ k.T / temperature)[off].view(q.shape[0], -1)
        else:
            negatives = q @ _prep(negative_keys, normalize).T / temperature
        return reduce_rows(_hard_negative_rows(positive, negatives, temperature, tau_plus, beta),
                           reduction)
    if negative_keys is None:
        logits = q @ k.T
        target = torch.arange(q.shape[0], device=q.device)
    else:
        n = _prep(negative_keys, normalize)
        pos = (q * k).sum(-1, keepdim=True)
        logits = torch.cat([pos, q @ n.T], dim=1)
        target = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
    vec = F.cross_entropy(logits / temperature, target, reduction="none")
    return reduce_rows(vec, reduction)


def nt_xent_loss(z1, z2, temperature=0.1, reduction="mean", normalize=True, decoupled=False,
                 positive_weight=None, tau_plus=0.0, beta=0.0):
    """SimCLR NT-Xent.

    Shapes: ``z1``, ``z2`` [N, D]. z = cat(z1, z2) ([2N, D]); logits = ẑẑᵀ / τ
    ([2N, 2N]) with the diagonal excluded; target of row i is (i + N) mod 2N.
    ``decoupled`` also excludes the target from the log-sum-exp (DCL);
    ``positive_weight`` ([N] for both views alike, or [2N]) multiplies the target logit:
    ℓ_i = LSE_i − w_i·s_{i,t(i)}.

    ``reduction="none"`` returns [2N] values (rows of z1 first, then z2);
    ``"mean"`` averages over all 2N rows. ``tau_plus``/``beta`` (not both 0): the debiased /
    hard-negative estimator (:func:`_hard_negative_rows`) over the 2N − 2 negatives.
    """
    z = _prep(torch.cat([z1, z2], dim=0), normalize)
    two_n = z.shape[0]
    if tau_plus or beta:
        half = two_n // 2
        positive = (z[:half] * z[half:]).sum(-1).repeat(2) / temperature
        target = (torch.arange(two_n, device=z.device) + half) % two_n
        keep = ~(_eye(two_n, z.device) | F.one_hot(target, two_n).bool())
        negatives = (z @ z.T / temperature)[keep].view(two_n, -1)
        return reduce_rows(_hard_negative_rows(positive, negatives, temperature, tau_plus, beta),
                           reduction)
    logits = (z @ z.T / temperature).masked_fill(_eye(two_n, z.device), float("-inf"))
    target = (torch.arange(two_n, device=z.device) + two_n // 2) % two_n
    positive = logits[torch.arange(two_n, device=z.device), target]
    if decoupled:
        logits = logits.masked_fill(F.one_hot(target, two_n).bool(), float("-inf"))
    weight = 1.0
    if positive_weight is not None:
        weight = positive_weight.to(positive.dtype)
        weight = weight.repeat(2) if weight.shape[0] != two_n else weight
    vec = torch.logsumexp(logits, dim=1) - weight * positive
    return reduce_rows(vec, reduction)


def _hard_negative_rows(positive, negatives, temperature, tau_plus, beta):
    """The estimator of Chuang et al. (debiased, ``tau_plus``) and Robinson et al. (hard
    negatives, ``beta``), written as the authors' released code (joshr17/HCL
    ``criterion``, estimator "hard"; β = 0 is chingyaoc/DCL's debiased loss) computes it,
    clamp included. positive [R] logits, negatives [R, n] logits. Returns [R]."""
    n = negatives.shape[1]
    pos = torch.exp(positive)
    neg = torch.exp(negatives)
    imp = (beta * neg.log()).exp()
    reweight_neg = (imp * neg).sum(dim=-1) / imp.mean(dim=-1)
    ng = (-tau_plus * n * pos + reweight_neg) / (1 - tau_plus)
    ng = torch.clamp(ng, min=n * torch.exp(-1 / torch.as_tensor(temperature, dtype=ng.dtype,
                                                                  device=ng.device)))
    return -torch.log(pos / (pos + ng))


def clip_loss(image_features, text_features, logit_scale, reduction="mean", normalize=False):
    """Symmetric CLIP loss, equal to open_clip ``ClipLoss()(img, txt, logit_scale)``.

    Shapes: ``image_features``, ``text_features`` [N, D]; ``logit_scale`` scalar
    (already exponentiated). S = logit_scale · I Tᵀ ([N, N]); targets arange.

    ``reduction="none"`` returns [N] values ½(CE of row i of S + CE of row i of Sᵀ),
    so the mean is ½(mean image CE + mean text CE).
    """
    img = _prep(image_features, normalize)
    txt = _prep(text_features, normalize)
    s = logit_scale * (img @ txt.T)
    target = torch.arange(s.shape[0], device=s.device)
    row = F.cross_entropy(s, target, reduction="none")
    col = F.cross_entropy(s.T, target, reduction="none")
    return reduce_rows(0.5 * (row + col), reduction)


def siglip_loss(image_features, text_features, logit_scale, logit_bias, reduction="mean", normalize=False):
    """Sigmoid (SigLIP) loss, equal to open_clip ``SigLipLoss()`` on one process.

    Shapes: ``image_features`` [N, D], ``text_features`` [M, D] (normally M = N);
    ``logit_scale``, ``logit_bias`` scalars. Pair term
    −log σ(z_ij · (logit_scale·⟨I_i, T_j⟩ + logit_bias)), z_ii = +1, else −1.

    ``reduction="none"`` returns [N] row sums Σ_j (pair term); ``"mean"`` is
    their mean, i.e. (1/N) Σ_ij, as open_clip; ``"sum"`` is Σ_ij.
    """
    img = _prep(image_features, normalize)
    txt = _prep(text_features, normalize)
    logits = logit_scale * (img @ txt.T) + logit_bias
    n, m = logits.shape
    z = 2 * torch.eye(n, m, dtype=logits.dtype, device=logits.device) - 1
    vec = -F.logsigmoid(z * logits).sum(dim=1)
    return reduce_rows(vec, reduction)


def simcse_unsup_loss(y_pred, lamda=0.05, reduction="mean"):
    """Unsupervised SimCSE loss (the common ``simcse_unsup_loss`` drop-in).

    Shape: ``y_pred`` [N, D], N even; rows 2k and 2k+1 are each other's
    positive. logits = cos(y_i, y_j) / lamda ([N, N]) with the diagonal
    excluded; target of row i is i ^ 1.

    ``reduction="none"`` returns the [N] per-row cross-entropies.
    """
    y = _prep(y_pred, True)
    n = y.shape[0]
    logits = (y @ y.T / lamda).masked_fill(_eye(n, y.device), float("-inf"))
    target = torch.arange(n, device=y.device) ^ 1
    vec = F.cross_entropy(logits, target, reduction="none")
    return reduce_rows(vec, reduction)


def simcse_sup_loss(y_pred, lamda=0.05, reduction="mean"):
    """Supervised SimCSE loss (the common ``simcse_sup_loss`` drop-in).

    Shape: ``y_pred`` [3B, D] in triplets (anchor 3k, positive 3k+1, hard
    negative 3k+2). Anchors are rows 3k ([B, D]); columns are all non-anchor
    rows in order ([2B, D]: pos₀, neg₀, pos₁, neg₁, …); logits = cos / lamda
    ([B, 2B]); target of anchor k is column 2k.

    ``reduction="none"`` returns the [B] per-anchor cross-entropies.
    """
    y = _prep(y_pred, True)
    idx = torch.arange(y.shape[0], device=y.device)
    anchors = y[idx % 3 == 0]
    cols = y[idx % 3 != 0]
    logits = anchors @ cols.T / lamda
    target = torch.arange(0, cols.shape[0], 2, device=y.device)
    vec = F.cross_entropy(logits, target, reduction="none")
    return reduce_rows(vec, reduction)


def supcon_loss(features, labels=None, temperature=0.07, base_temperature=0.07, reduction="mean", normalize=False):
    """Supervised contrastive loss L_out (Khosla et al.; SupContrast "all" mode).

    Shapes: ``features`` [N, D] or [B, V, D]; the latter is flattened view-major
    (``cat(unbind(features, 1))``, N = B·V) with ``labels`` [B] repeated V times.
    ``labels`` [N] / [B] integers; None means each sample is its own class (so
    with V ≥ 2 the other views are the positives).

    s_ij = ⟨f_i, f_j⟩ / τ; A(i) = all rows but i; P(i) = other rows with i's label;
    ℓ_i = −(τ/τ_base) · mean_{p∈P(i)} (s_ip − logsumexp_{a∈A(i)} s_ia).

    ``reduction="none"`` returns [N] values (view-major order), 0 for anchors
    with empty P(i); ``"mean"`` averages over anchors with |P(i)| ≥ 1 only and
    is 0 (zero gradient) when there are none.
    """
    if features.dim() == 3:
        b, v = features.shape[:2]
        f = torch.cat(torch.unbind(features, dim=1), dim=0)
        if labels is None:
            labels = torch.arange(b, device=features.device)
        labels = labels.repeat(v)
    else:
        f = features
        if labels is None:
            labels = torch.arange(f.shape[0], device=f.device)
    f = _prep(f, normalize)
    n = f.shape[0]
    self_mask = _eye(n, f.device)
    s = f @ f.T / temperature
    lse = torch.logsumexp(s.masked_fill(self_mask, float("-inf")), dim=1, keepdim=True)
    log_prob = s - lse
    pos = (labels[:, None] == labels[None, :]) & ~self_mask
    n_pos = pos.sum(dim=1)
    # where (not mask-multiply): log_prob of non-positives may be ±inf when A(i) is empty.
    mean_log_prob_pos = torch.where(pos, log_prob, torch.zeros_like(log_prob)).sum(dim=1) / n_pos.clamp_min(1)
    valid = n_pos > 0
    vec = -(temperature / base_temperature) * mean_log_prob_pos
    vec = torch.where(valid, vec, torch.zeros_like(vec))
    return reduce_rows(vec, reduction, valid)


def n_pair_loss(anchors, positives, l2_reg=0.0, reduction="mean"):
    """Sohn's multi-class N-pair loss.

    Shapes: ``anchors``, ``positives`` [N, D]. logits = A Pᵀ (raw dot products,
    scale 1), targets arange; per-row value CE_i + l2_reg·(‖a_i‖² + ‖p_i‖²).

    ``reduction="none"`` returns those [N] values, so ``"mean"`` is
    mean CE + l2_reg · mean_i(‖a_i‖² + ‖p_i‖²).
    """
    a = _upcast(anchors)
    p = _upcast(positives)
    target = torch.arange(a.shape[0], device=a.device)
    ce = F.cross_entropy(a @ p.T, target, reduction="none")
    vec = ce + l2_reg * (a.pow(2).sum(dim=1) + p.pow(2).sum(dim=1))
    return reduce_rows(vec, reduction)


def triplet_margin_loss(embeddings, labels, margin=0.2, mining="batch_hard", squared=False, normalize=False,
                        reduction="mean"):
    """Triplet margin loss. Shapes: ``embeddings`` [N, D], ``labels`` [N] integers.
    d = Euclidean distance (squared if ``squared``; rows normalized first if
    ``normalize``); a triplet (a, p, n) has y_a = y_p ≠ y_n, a ≠ p.

    - ``"batch_hard"`` (Hermans et al.): hardest positive = argmax_{p} d(a, p), hardest
      negative = argmin_{n} d(a, n), ties to the lowest index; ℓ_a = relu(d_ap − d_an +
      margin); gradient through the two selected distances only. ``"none"``: [N], 0 for
      anchors lacking a positive or a negative; ``"mean"`` over the valid anchors.
    - ``"batch_all"``: every triplet enumerated (N×N×N); ℓ_apn = d_ap − d_an + margin,
      active where not ≤ 0 (NaN is active); ``"none"``: [N] per-anchor sums of the active
      ℓ; ``"mean"``: their total over the number of active triplets (0 if none).
    - ``"semi_hard"``: per positive pair, the lowest-index nearest negative with
      d_an > d_ap, else the lowest-index farthest negative, else 0 (no negatives);
      ℓ_ap = relu(d_ap − d_an + margin); ``"none"``: [N] per-anchor sums over positive
      pairs, NaN for an anchor with a positive and a NaN distance to any other row;
      ``"mean"``: the total over the number of positive pairs (0 if none).
    """
    if mining == "batch_all":
        return _batch_all(embeddings, labels, margin, squared, normalize, reduction)
    if mining == "semi_hard":
        return _semi_hard(embeddings, labels, margin, squared, normalize, reduction)
    if mining != "batch_hard":
        raise ValueError(f"mining must be 'batch_hard', 'batch_all' or 'semi_hard', got {mining!r}")
    x = _prep(embeddings, normalize)
    n = x.shape[0]
    d2 = _pairwise_sq_dist(x)
    d = d2 if squared else _safe_sqrt(d2)
    same = labels[:, None] == labels[None, :]
    pos = same & ~_eye(n, x.device)
    neg = ~same
    # Selection is on detached values; torch.max/min return the first index on ties.
    with torch.no_grad():
        ap_idx = d.masked_fill(~pos, float("-inf")).max(dim=1).indices
        an_idx = d.masked_fill(~neg, float("inf")).min(dim=1).indices
    valid = pos.any(dim=1) & neg.any(dim=1)
    # The selected distances come from the differences of the selected rows (an anchor
    # without a triplet is paired with itself), so the gradient reaches exactly the rows
    # of the selected pairs: a non-finite row makes non-finite only the gradients of the
    # rows paired with it, not (through 0·NaN in a dense N×N backward) every row.
    own = torch.arange(n, device=x.device)
    d_ap = _selected_distance(x, torch.where(valid, ap_idx, own), squared)
    d_an = _selected_distance(x, torch.where(valid, an_idx, own), squared)
    vec = torch.relu(d_ap - d_an + margin)
    vec = torch.where(valid, vec, torch.zeros_like(vec))
    return reduce_rows(vec, reduction, valid)




def _triplet_setup(embeddings, labels, squared, normalize):
    """(d [N, N], positive-pair mask, negative-pair mask)."""
    x = _prep(embeddings, normalize)
    n = x.shape[0]
    d2 = _pairwise_sq_dist(x)
    d = d2 if squared else _safe_sqrt(d2)
    same = labels[:, None] == labels[None, :]
    return d, same & ~_eye(n, x.device), ~same


def _anchor_chunks(n: int):
    """Anchor slices whose [chunk, N, N] triplet tensors stay near 2^24 elements."""
    step = max(1, (1 << 24) // max(n * n, 1))
    return [slice(a, min(a + step, n)) for a in range(0, n, step)]


def _reduce_over(vec, reduction, count):
    if reduction == "none":
        return vec
    if reduction == "sum":
        return vec.sum()
    return vec.sum() / count.clamp_min(1)


def _batch_all(embeddings, labels, margin, squared, normalize, reduction):
    d, pos, neg = _triplet_setup(embeddings, labels, squared, normalize)
    rows, count = [], d.new_zeros(())
    for a in _anchor_chunks(d.shape[0]):
        loss = d[a, :, None] - d[a, None, :] + margin  # [anchor, positive, negative]
        active = pos[a, :, None] & neg[a, None, :] & ~(loss <= 0)
        rows.append(torch.where(active, loss, torch.zeros_like(loss)).sum(dim=(1, 2)))
        count = count + active.sum()
    return _reduce_over(torch.cat(rows), reduction, count)


def _semi_hard(embeddings, labels, margin, squared, normalize, reduction):
    d, pos, neg = _triplet_setup(embeddings, labels, squared, normalize)
    n = d.shape[0]
    cols = torch.arange(n, device=d.device)
    rows = []
    for a in _anchor_chunks(n):
        with torch.no_grad():
            dd = torch.nan_to_num(d[a], nan=0.0)  # NaN rows are overwritten below
            beyond = neg[a, None, :] & (dd[:, None, :] > dd[:, :, None])  # [anchor, p, n]
            near = torch.where(beyond, dd[:, None, :], float("inf")).amin(dim=2, keepdim=True)
            first_near = torch.where(beyond & (dd[:, None, :] == near), cols, n).amin(dim=2)
            far = torch.where(neg[a], dd, float("-inf")).amax(dim=1, keepdim=True)
            first_far = torch.where(neg[a] & (dd == far), cols, n).amin(dim=1, keepdim=True)
            chosen = torch.where(beyond.any(dim=2), first_near, first_far).clamp_max(n - 1)
        has_neg = neg[a].any(dim=1, keepdim=True)
        d_an = torch.where(has_neg, d[a].gather(1, chosen), torch.zeros_like(d[a]))
        loss = torch.where(pos[a], torch.relu(d[a] - d_an + margin), torch.zeros_like(d[a]))
        vec = loss.sum(dim=1)
        bad = (torch.isnan(d[a]) & (pos[a] | neg[a])).any(dim=1) & pos[a].any(dim=1)
        rows.append(torch.where(bad, torch.full_like(vec, float("nan")), vec))
    return _reduce_over(torch.cat(rows), reduction, pos.sum())


def _selected_distance(x: torch.Tensor, idx: torch.Tensor, squared: bool) -> torch.Tensor:
    """[N] distances d(x_i, x_idx_i) from the difference (squared if ``squared``)."""
    d2 = (x - x.index_select(0, idx)).pow(2).sum(dim=1)
    return d2 if squared else _safe_sqrt(d2)


def contrastive_loss(embeddings, labels, margin=1.0, reduction="mean"):
    """Pairwise contrastive loss (Hadsell, Chopra & LeCun 2006).

    Shapes: ``embeddings`` [N, D] (N ≥ 2), ``labels`` [N] integers. Over ordered
    pairs i≠j: d_ij² if y_i = y_j, else relu(margin − d_ij)², d Euclidean.

    ``reduction="none"`` returns [N] values: anchor i's mean over j≠i of its
    pair terms. ``"mean"`` = their mean = mean over all N(N−1) ordered pairs;
    ``"sum"`` = their sum = (sum over all ordered pairs) / (N − 1).
    """
    x = _upcast(embeddings)
    n = x.shape[0]
    d2 = _pairwise_sq_dist(x)
    same = labels[:, None] == labels[None, :]
    # Positives use d² directly (no sqrt round-trip); negatives need d itself.
    terms = torch.where(same, d2, torch.relu(margin - _safe_sqrt(d2)).pow(2))
    terms = terms.masked_fill(_eye(n, x.device), 0.0)
    vec = terms.sum(dim=1) / (n - 1)
    return reduce_rows(vec, reduction)


def multiple_negatives_ranking_loss(queries, docs, scale=20.0, directions=("query_to_doc",),
                                    partition_mode="joint", hardness_mode=None,
                                    hardness_strength=0.0, reduction="mean", normalize=True):
    """Multiple-negatives ranking loss (sentence-transformers' MNRL), materialized.

    Shapes: ``queries`` [N, D]; ``docs`` a list of [N, D]: positives, then hard-negative
    columns. With C = cat(docs) ([(1+h)·N, D]) and cos the cosine (dot when not
    ``normalize``), row i's candidate sets are
    query_to_doc cos(q_i, C), query_to_query cos(q_i, Q) without i, doc_to_query
    cos(d_i, Q), doc_to_doc cos(d_i, C) without every column of query i; each scaled by
    ``scale``. A hardness mode adds ``hardness_strength · stop_grad(cos)`` (unscaled) to
    the query_to_doc logits of: every column but query i's own ("in_batch_negatives"),
    query i's own hard negatives ("hard_negatives"), every column but the positive
    ("all_negatives"). log Z_i is one log-sum-exp over the union ("joint") or the mean of
    the per-set ones ("per_direction"); the loss row is log Z_i − scale·cos(q_i, d_i).
    """
    q = _prep(queries, normalize)
    d = [_prep(x, normalize) for x in docs]
    n, blocks = q.shape[0], len(d)
    c = torch.cat(d)
    own = _eye(n, q.device).repeat(1, blocks)           # [N, (1+h)N]: query i's documents
    first = torch.zeros_like(own)
    first[:, :n] = True                                  # the positives' block
    qd = q @ c.T
    sims = {"query_to_doc": qd * scale}
    if hardness_mode is not None and hardness_strength > 0:
        boosted = {"in_batch_negatives": ~own, "hard_negatives": own & ~first,
                   "all_negatives": ~(own & first)}[hardness_mode]
        sims["query_to_doc"] = sims["query_to_doc"] + hardness_strength * torch.where(
            boosted, qd.detach(), torch.zeros_like(qd))
    if "query_to_query" in directions:
        sims["query_to_query"] = (q @ q.T * scale).masked_fill(_eye(n, q.device), float("-inf"))
    if "doc_to_query" in directions:
        sims["doc_to_query"] = d[0] @ q.T * scale
    if "doc_to_doc" in directions:
        sims["doc_to_doc"] = (d[0] @ c.T * scale).masked_fill(own, float("-inf"))
    sets = [sims[k] for k in ("query_to_doc", "query_to_query", "doc_to_query", "doc_to_doc")
            if k in sims]
    if partition_mode == "joint":
        log_z = torch.logsumexp(torch.cat(sets, dim=1), dim=1)
    else:
        log_z = torch.stack([torch.logsumexp(x, dim=1) for x in sets]).mean(0)
    positive = (q * d[0]).sum(-1) * scale
    return reduce_rows(log_z - positive, reduction)


REFERENCE_LOSSES = {
    "info_nce": info_nce,
    "nt_xent_loss": nt_xent_loss,
    "clip_loss": clip_loss,
    "siglip_loss": siglip_loss,
    "simcse_unsup_loss": simcse_unsup_loss,
    "simcse_sup_loss": simcse_sup_loss,
    "supcon_loss": supcon_loss,
    "n_pair_loss": n_pair_loss,
    "triplet_margin_loss": triplet_margin_loss,
    "contrastive_loss": contrastive_loss,
    "multiple_negatives_ranking_loss": multiple_negatives_ranking_loss,
}
