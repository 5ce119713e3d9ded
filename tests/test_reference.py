"""The pure-PyTorch references equal the drop-in targets named in SPEC §2.

Each upstream target (open_clip, info-nce-pytorch, SimCSE, SupContrast, SimCLR) is
written inline below the way its library writes it, so nothing is installed.
"""

import importlib.util
import itertools
import math
import pathlib

import pytest
import torch
import torch.nn.functional as F

# Load the file by path: the reference only needs torch, so its tests must not depend
# on the state of the rest of the package.
_PATH = pathlib.Path(__file__).resolve().parents[1] / "contrastive_kernels" / "reference.py"
_spec = importlib.util.spec_from_file_location("_ck_reference_under_test", _PATH)
R = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(R)

F64 = torch.float64
TOL = dict(rtol=1e-10, atol=1e-10)
NS = (1, 2, 3, 7, 33)
DS = (1, 7, 65)


def randn(*shape, seed, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=F64).to(dtype)


def close(a, b, **kw):
    torch.testing.assert_close(a, b, **(kw or TOL))


# --------------------------------------------------------------------------- #
# upstream targets, written as their libraries write them
# --------------------------------------------------------------------------- #
def openclip_clip_loss(image_features, text_features, logit_scale):
    logits_per_image = logit_scale * image_features @ text_features.T
    logits_per_text = logit_scale * text_features @ image_features.T
    labels = torch.arange(logits_per_image.shape[0], dtype=torch.long)
    return (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)) / 2


def openclip_siglip_loss(image_features, text_features, logit_scale, logit_bias):
    logits = logit_scale * image_features @ text_features.T + logit_bias
    n = image_features.shape[0]
    labels = 2 * torch.eye(n, dtype=image_features.dtype) + -torch.ones((n, n), dtype=image_features.dtype)
    return -F.logsigmoid(labels * logits).sum() / image_features.shape[0]


def infonce_pytorch(query, positive_key, negative_keys=None, temperature=0.1, reduction="mean",
                    negative_mode="unpaired"):
    query, positive_key, negative_keys = [None if x is None else F.normalize(x, dim=-1)
                                          for x in (query, positive_key, negative_keys)]
    if negative_keys is not None:
        positive_logit = torch.sum(query * positive_key, dim=1, keepdim=True)
        assert negative_mode == "unpaired"
        negative_logits = query @ negative_keys.transpose(-2, -1)
        logits = torch.cat([positive_logit, negative_logits], dim=1)
        labels = torch.zeros(len(logits), dtype=torch.long)
    else:
        logits = query @ positive_key.transpose(-2, -1)
        labels = torch.arange(len(query))
    return F.cross_entropy(logits / temperature, labels, reduction=reduction)


def simcse_unsup_target(y_pred, lamda=0.05):
    idxs = torch.arange(0, y_pred.shape[0])
    y_true = idxs + 1 - idxs % 2 * 2
    similarities = F.cosine_similarity(y_pred.unsqueeze(1), y_pred.unsqueeze(0), dim=2)
    similarities = similarities - torch.eye(y_pred.shape[0], dtype=y_pred.dtype) * 1e12
    similarities = similarities / lamda
    loss = F.cross_entropy(similarities, y_true)
    return torch.mean(loss)


def simcse_sup_target(y_pred, lamda=0.05):
    row = torch.arange(0, y_pred.shape[0], 3)
    col = torch.arange(y_pred.shape[0])
    col = torch.where(col % 3 != 0)[0]
    y_true = torch.arange(0, len(col), 2)
    similarities = F.cosine_similarity(y_pred.unsqueeze(1), y_pred.unsqueeze(0), dim=2)
    similarities = torch.index_select(similarities, 0, row)
    similarities = torch.index_select(similarities, 1, col)
    similarities = similarities / lamda
    loss = F.cross_entropy(similarities, y_true)
    return torch.mean(loss)


def supcontrast_supcon(features, labels=None, temperature=0.07, base_temperature=0.07):
    """SupContrast SupConLoss.forward with contrast_mode='all'."""
    batch_size = features.shape[0]
    if labels is None:
        mask = torch.eye(batch_size, dtype=torch.float32)
    else:
        labels = labels.contiguous().view(-1, 1)
        mask = torch.eq(labels, labels.T).float()
    contrast_count = features.shape[1]
    contrast_feature = torch.cat(torch.unbind(features, dim=1), dim=0)
    anchor_feature = contrast_feature
    anchor_count = contrast_count
    anchor_dot_contrast = torch.div(torch.matmul(anchor_feature, contrast_feature.T), temperature)
    logits_max, _ = torch.max(anchor_dot_contrast, dim=1, keepdim=True)
    logits = anchor_dot_contrast - logits_max.detach()
    mask = mask.repeat(anchor_count, contrast_count)
    logits_mask = torch.scatter(torch.ones_like(mask), 1,
                                torch.arange(batch_size * anchor_count).view(-1, 1), 0)
    mask = mask * logits_mask
    exp_logits = torch.exp(logits) * logits_mask
    log_prob = logits - torch.log(exp_logits.sum(1, keepdim=True))
    mask_pos_pairs = mask.sum(1)
    mask_pos_pairs = torch.where(mask_pos_pairs < 1e-6, 1, mask_pos_pairs)
    mean_log_prob_pos = (mask * log_prob).sum(1) / mask_pos_pairs
    loss = -(temperature / base_temperature) * mean_log_prob_pos
    loss = loss.view(anchor_count, batch_size).mean()
    return loss


def simclr_nt_xent(z1, z2, temperature=0.1):
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2], dim=0), dim=1)
    sim = z @ z.T / temperature
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool), float("-inf"))
    targets = torch.cat([torch.arange(n) + n, torch.arange(n)])
    return F.cross_entropy(sim, targets)


def brute_triplet(x, labels, margin, squared=False):
    """Batch-hard triplet loss with Python loops (lowest index wins ties)."""
    n = x.shape[0]
    losses = []
    for a in range(n):
        dist = [((x[a] - x[j]) ** 2).sum() for j in range(n)]
        if not squared:
            dist = [dd.sqrt() for dd in dist]
        pos = [j for j in range(n) if j != a and labels[j] == labels[a]]
        neg = [j for j in range(n) if labels[j] != labels[a]]
        if not pos or not neg:
            continue
        p = max(pos, key=lambda j: (dist[j].item(), -j))
        q = min(neg, key=lambda j: (dist[j].item(), j))
        losses.append(torch.relu(dist[p] - dist[q] + margin))
    return torch.stack(losses).mean() if losses else x.new_zeros(())


def brute_contrastive(x, labels, margin):
    terms = []
    for i, j in itertools.permutations(range(x.shape[0]), 2):
        d = (x[i] - x[j]).norm()
        terms.append(d ** 2 if labels[i] == labels[j] else torch.relu(margin - d) ** 2)
    return torch.stack(terms).mean()


# --------------------------------------------------------------------------- #
# agreement with the drop-in targets
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("n,d", itertools.product(NS, DS))
def test_clip_matches_open_clip(n, d):
    img = F.normalize(randn(n, d, seed=1), dim=-1)
    txt = F.normalize(randn(n, d, seed=2), dim=-1)
    for scale in (14.3, torch.tensor(100.0, dtype=F64)):
        close(R.clip_loss(img, txt, scale), openclip_clip_loss(img, txt, scale))
    # normalize=True normalizes inside
    raw_i, raw_t = randn(n, d, seed=3), randn(n, d, seed=4)
    close(R.clip_loss(raw_i, raw_t, 10.0, normalize=True),
          openclip_clip_loss(F.normalize(raw_i, dim=-1), F.normalize(raw_t, dim=-1), 10.0))


@pytest.mark.parametrize("n,d", itertools.product(NS, DS))
def test_siglip_matches_open_clip(n, d):
    img = F.normalize(randn(n, d, seed=5), dim=-1)
    txt = F.normalize(randn(n, d, seed=6), dim=-1)
    for scale, bias in ((10.0, -10.0), (torch.tensor(3.0, dtype=F64), torch.tensor(0.5, dtype=F64))):
        close(R.siglip_loss(img, txt, scale, bias), openclip_siglip_loss(img, txt, scale, bias))


@pytest.mark.parametrize("n,d", itertools.product(NS, DS))
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_info_nce_matches_info_nce_pytorch(n, d, reduction):
    q, p = randn(n, d, seed=7), randn(n, d, seed=8)
    close(R.info_nce(q, p, temperature=0.2, reduction=reduction),
          infonce_pytorch(q, p, temperature=0.2, reduction=reduction))
    for k in (1, 5):
        neg = randn(k, d, seed=9 + k)
        close(R.info_nce(q, p, neg, temperature=0.07, reduction=reduction),
              infonce_pytorch(q, p, neg, temperature=0.07, reduction=reduction))


@pytest.mark.parametrize("n,d", itertools.product(NS, DS))
def test_nt_xent_matches_simclr(n, d):
    z1, z2 = randn(n, d, seed=11), randn(n, d, seed=12)
    close(R.nt_xent_loss(z1, z2, temperature=0.5), simclr_nt_xent(z1, z2, 0.5))
    close(R.nt_xent_loss(z1, z2), simclr_nt_xent(z1, z2, 0.1))


@pytest.mark.parametrize("n,d", itertools.product((2, 8, 34), DS))
def test_simcse_unsup_matches_common(n, d):
    y = randn(n, d, seed=13)
    close(R.simcse_unsup_loss(y), simcse_unsup_target(y))
    close(R.simcse_unsup_loss(y, lamda=0.5), simcse_unsup_target(y, lamda=0.5))


@pytest.mark.parametrize("n,d", itertools.product((3, 9, 33), DS))
def test_simcse_sup_matches_common(n, d):
    y = randn(n, d, seed=14)
    close(R.simcse_sup_loss(y), simcse_sup_target(y))
    close(R.simcse_sup_loss(y, lamda=0.5), simcse_sup_target(y, lamda=0.5))


@pytest.mark.parametrize("b,d", itertools.product(NS, DS))
@pytest.mark.parametrize("views", [2, 3])
def test_supcon_matches_supcontrast(b, d, views):
    f = F.normalize(randn(b, views, d, seed=15), dim=-1)
    g = torch.Generator().manual_seed(16)
    labels = torch.randint(0, max(1, b // 2), (b,), generator=g)
    # views >= 2: every anchor has a positive (its other views)
    close(R.supcon_loss(f, labels), supcontrast_supcon(f, labels))
    close(R.supcon_loss(f, labels, temperature=0.1, base_temperature=0.2),
          supcontrast_supcon(f, labels, temperature=0.1, base_temperature=0.2))
    close(R.supcon_loss(f), supcontrast_supcon(f))  # labels=None: SimCLR mode
    raw = randn(b, views, d, seed=17)
    close(R.supcon_loss(raw, labels, normalize=True), supcontrast_supcon(F.normalize(raw, dim=-1), labels))


@pytest.mark.parametrize("d", DS)
def test_supcon_2d_equals_single_view(d):
    f = F.normalize(randn(8, d, seed=18), dim=-1)
    labels = torch.tensor([0, 1, 2, 3, 3, 2, 1, 0])  # every class has two members
    close(R.supcon_loss(f, labels), supcontrast_supcon(f[:, None, :], labels))
    close(R.supcon_loss(f, labels, reduction="none"), R.supcon_loss(f[:, None, :], labels, reduction="none"))


@pytest.mark.parametrize("n,d", itertools.product(NS, DS))
def test_n_pair_matches_definition(n, d):
    a, p = randn(n, d, seed=19), randn(n, d, seed=20)
    ce = F.cross_entropy(a @ p.T, torch.arange(n))
    close(R.n_pair_loss(a, p), ce)
    reg = (a.pow(2).sum(1) + p.pow(2).sum(1)).mean()
    close(R.n_pair_loss(a, p, l2_reg=0.02), ce + 0.02 * reg)


# --------------------------------------------------------------------------- #
# triplet / contrastive: hand-computed and brute-force
# --------------------------------------------------------------------------- #
def test_triplet_hand_computed():
    x = torch.tensor([[0.0], [1.0], [3.0], [6.0], [10.0]], dtype=F64)
    labels = torch.tensor([0, 0, 1, 1, 2])  # anchor 4 has no positive: excluded
    # a0: ap=1 an=3 -> 0.5; a1: ap=1 an=2 -> 1.5; a2: ap=3 an=2 -> 3.5; a3: ap=3 an=4 -> 1.5
    expected = torch.tensor([0.5, 1.5, 3.5, 1.5, 0.0], dtype=F64)
    close(R.triplet_margin_loss(x, labels, margin=2.5, reduction="none"), expected, rtol=0, atol=1e-15)
    close(R.triplet_margin_loss(x, labels, margin=2.5), torch.tensor(7.0 / 4, dtype=F64), rtol=0, atol=1e-15)
    close(R.triplet_margin_loss(x, labels, margin=2.5, reduction="sum"), torch.tensor(7.0, dtype=F64),
          rtol=0, atol=1e-15)
    # squared distances: a0: 1-9+2.5 -> 0; a1: 1-4+2.5 -> 0; a2: 9-4+2.5 = 7.5; a3: 9-16+2.5 -> 0
    close(R.triplet_margin_loss(x, labels, margin=2.5, squared=True, reduction="none"),
          torch.tensor([0.0, 0.0, 7.5, 0.0, 0.0], dtype=F64), rtol=0, atol=1e-15)
    # Euclidean, not per-coordinate: 3-4-5 triangle
    y = torch.tensor([[0.0, 0.0], [3.0, 4.0], [6.0, 0.0]], dtype=F64)
    out = R.triplet_margin_loss(y, torch.tensor([0, 0, 1]), margin=1.0, reduction="none")
    # a0: 5-6+1 = 0; a1: 5-5+1 = 1; a2: no positive
    close(out, torch.tensor([0.0, 1.0, 0.0], dtype=F64), rtol=0, atol=1e-15)


def test_triplet_ties_pick_lowest_index():
    # anchor 0: positives 1 and 2 both at distance 1; negatives 3 and 4 both at distance 5
    x = torch.tensor([[0.0], [1.0], [-1.0], [5.0], [-5.0]], dtype=F64, requires_grad=True)
    labels = torch.tensor([0, 0, 0, 1, 1])
    vec = R.triplet_margin_loss(x, labels, margin=10.0, reduction="none")
    close(vec[0], torch.tensor(6.0, dtype=F64), rtol=0, atol=1e-15)
    (g,) = torch.autograd.grad(vec[0], x)
    # only the selected pair (0,1) and (0,3) carry gradient
    close(g, torch.tensor([[0.0], [1.0], [0.0], [-1.0], [0.0]], dtype=F64), rtol=0, atol=1e-15)


def test_triplet_excluded_anchors_and_zero_distance():
    # every label equal: no anchor has a negative -> mean 0, zero finite gradients
    x = randn(4, 3, seed=21).requires_grad_()
    loss = R.triplet_margin_loss(x, torch.zeros(4, dtype=torch.long))
    assert loss.item() == 0.0
    (g,) = torch.autograd.grad(loss, x)
    assert torch.equal(g, torch.zeros_like(g))
    # duplicate points: selected positive distance is exactly 0, gradient finite
    y = torch.tensor([[0.0, 0.0], [0.0, 0.0], [1.0, 0.0]], dtype=F64, requires_grad=True)
    loss = R.triplet_margin_loss(y, torch.tensor([0, 0, 1]), margin=2.0, reduction="none")
    close(loss, torch.tensor([1.0, 1.0, 0.0], dtype=F64), rtol=0, atol=1e-15)  # anchor 2: no positive
    (g,) = torch.autograd.grad(loss.sum(), y)
    assert torch.isfinite(g).all()


def test_triplet_unknown_mining():
    with pytest.raises(ValueError, match="mining"):
        R.triplet_margin_loss(randn(3, 2, seed=0), torch.tensor([0, 0, 1]), mining="hardest")


@pytest.mark.parametrize("n,d", itertools.product((2, 3, 7), (1, 7)))
@pytest.mark.parametrize("squared", [False, True])
def test_triplet_matches_brute_force(n, d, squared):
    x = randn(n, d, seed=22 + n)
    g = torch.Generator().manual_seed(n)
    labels = torch.randint(0, 3, (n,), generator=g)
    labels[0], labels[1], labels[-1] = 0, 0, 1  # at least one valid anchor when n >= 3
    if n == 2:
        labels = torch.tensor([0, 1])  # no positives: mean is 0
    for margin in (0.2, 3.0):
        close(R.triplet_margin_loss(x, labels, margin=margin, squared=squared),
              brute_triplet(x, labels, margin, squared))


def test_contrastive_hand_computed():
    x = torch.tensor([[0.0], [1.0], [3.0]], dtype=F64)
    labels = torch.tensor([0, 0, 1])
    # pairs: (0,1) same d=1 -> 1; (0,2) diff d=3 -> 0; (1,2) diff d=2 -> 0.25
    rows = torch.tensor([0.5, 0.625, 0.125], dtype=F64)
    close(R.contrastive_loss(x, labels, margin=2.5, reduction="none"), rows, rtol=0, atol=1e-15)
    close(R.contrastive_loss(x, labels, margin=2.5), torch.tensor(2.5 / 6, dtype=F64), rtol=0, atol=1e-15)
    close(R.contrastive_loss(x, labels, margin=2.5, reduction="sum"), rows.sum(), rtol=0, atol=1e-15)


@pytest.mark.parametrize("n,d", itertools.product((2, 3, 7), (1, 7)))
def test_contrastive_matches_brute_force(n, d):
    x = randn(n, d, seed=30 + n)
    labels = torch.randint(0, 2, (n,), generator=torch.Generator().manual_seed(n))
    for margin in (0.5, 4.0):
        close(R.contrastive_loss(x, labels, margin=margin), brute_contrastive(x, labels, margin))


def test_contrastive_duplicate_points_finite_grad():
    x = torch.tensor([[1.0, 2.0], [1.0, 2.0], [0.0, 0.0]], dtype=F64, requires_grad=True)
    loss = R.contrastive_loss(x, torch.tensor([0, 1, 1]), margin=1.0)  # negative pair at d=0
    (g,) = torch.autograd.grad(loss, x)
    assert torch.isfinite(g).all()


# --------------------------------------------------------------------------- #
# generic properties over every loss
# --------------------------------------------------------------------------- #
def _t(v, dtype, grad):
    return torch.tensor(v, dtype=dtype, requires_grad=grad)


def make_case(name, dtype=F64, scalar_dtype=F64, grad=True):
    """Returns (call(*tensors, reduction) -> loss, tensors, valid mask or None).

    ``tensors`` are every differentiable input: features first, then scalar tensors.
    """
    s = lambda v: _t(v, scalar_dtype, grad)  # noqa: E731
    x = lambda *shape, seed: randn(*shape, seed=seed, dtype=dtype).requires_grad_(grad)  # noqa: E731
    if name == "info_nce":
        ts = [x(5, 7, seed=40), x(5, 7, seed=41), s(0.3)]
        return (lambda q, p, t, reduction: R.info_nce(q, p, temperature=t, reduction=reduction)), ts, None
    if name == "info_nce_neg":
        ts = [x(5, 7, seed=42), x(5, 7, seed=43), x(4, 7, seed=44), s(0.3)]
        return (lambda q, p, n, t, reduction: R.info_nce(q, p, n, temperature=t, reduction=reduction)), ts, None
    if name == "nt_xent_loss":
        ts = [x(4, 7, seed=45), x(4, 7, seed=46), s(0.5)]
        return (lambda a, b, t, reduction: R.nt_xent_loss(a, b, temperature=t, reduction=reduction)), ts, None
    if name == "clip_loss":
        ts = [x(5, 7, seed=47), x(5, 7, seed=48), s(2.0)]
        return (lambda i, t, sc, reduction: R.clip_loss(i, t, sc, reduction=reduction, normalize=True)), ts, None
    if name == "siglip_loss":
        ts = [x(5, 7, seed=49), x(5, 7, seed=50), s(2.0), s(-1.0)]
        return (lambda i, t, sc, b, reduction: R.siglip_loss(i, t, sc, b, reduction=reduction, normalize=True)), \
            ts, None
    if name == "simcse_unsup_loss":
        ts = [x(6, 7, seed=51), s(0.5)]
        return (lambda y, lam, reduction: R.simcse_unsup_loss(y, lam, reduction=reduction)), ts, None
    if name == "simcse_sup_loss":
        ts = [x(9, 7, seed=52), s(0.5)]
        return (lambda y, lam, reduction: R.simcse_sup_loss(y, lam, reduction=reduction)), ts, None
    if name == "supcon_loss":
        labels = torch.tensor([0, 1, 0, 2])
        ts = [x(4, 2, 7, seed=53), s(0.5), s(0.7)]
        return (lambda f, t, bt, reduction: R.supcon_loss(f, labels, t, bt, reduction=reduction,
                                                          normalize=True)), ts, None
    if name == "supcon_2d":
        labels = torch.tensor([0, 0, 1, 1, 2, 3])  # anchors 4 and 5 have no positive
        ts = [x(6, 7, seed=54), s(0.5)]
        valid = torch.tensor([True] * 4 + [False] * 2)
        return (lambda f, t, reduction: R.supcon_loss(f, labels, t, reduction=reduction, normalize=True)), \
            ts, valid
    if name == "n_pair_loss":
        ts = [x(5, 7, seed=55), x(5, 7, seed=56), s(0.1)]
        return (lambda a, p, l2, reduction: R.n_pair_loss(a, p, l2, reduction=reduction)), ts, None
    if name == "triplet_margin_loss":
        labels = torch.tensor([0, 0, 1, 1, 2, 2, 2, 3])  # anchor 7 has no positive
        ts = [x(8, 3, seed=57), s(2.0)]
        valid = torch.tensor([True] * 7 + [False])
        return (lambda e, m, reduction: R.triplet_margin_loss(e, labels, m, reduction=reduction)), ts, valid
    if name == "triplet_sq_norm":
        labels = torch.tensor([0, 0, 1, 1, 2, 2])
        ts = [x(6, 3, seed=58), s(1.5)]
        return (lambda e, m, reduction: R.triplet_margin_loss(e, labels, m, squared=True, normalize=True,
                                                              reduction=reduction)), ts, None
    if name == "contrastive_loss":
        labels = torch.tensor([0, 0, 1, 1, 2, 0])
        ts = [x(6, 3, seed=59), s(2.0)]
        return (lambda e, m, reduction: R.contrastive_loss(e, labels, m, reduction=reduction)), ts, None
    raise KeyError(name)


CASES = ["info_nce", "info_nce_neg", "nt_xent_loss", "clip_loss", "siglip_loss", "simcse_unsup_loss",
         "simcse_sup_loss", "supcon_loss", "supcon_2d", "n_pair_loss", "triplet_margin_loss",
         "triplet_sq_norm", "contrastive_loss"]


def test_every_loss_exported():
    assert set(R.REFERENCE_LOSSES) == {
        "info_nce", "nt_xent_loss", "clip_loss", "siglip_loss", "simcse_unsup_loss", "simcse_sup_loss",
        "supcon_loss", "n_pair_loss", "triplet_margin_loss", "contrastive_loss",
        "multiple_negatives_ranking_loss"}
    for name, fn in R.REFERENCE_LOSSES.items():
        assert fn is getattr(R, name) and fn.__doc__


@pytest.mark.parametrize("name", CASES)
def test_reductions_consistent(name):
    call, ts, valid = make_case(name, grad=False)
    none = call(*ts, reduction="none")
    assert none.dim() == 1
    close(call(*ts, reduction="sum"), none.sum(), rtol=1e-14, atol=1e-14)
    expected_mean = none.mean() if valid is None else none[valid].mean()
    close(call(*ts, reduction="mean"), expected_mean, rtol=1e-14, atol=1e-14)
    if valid is not None:
        assert (none[~valid] == 0).all()
    with pytest.raises(ValueError):
        call(*ts, reduction="avg")


def test_none_lengths():
    a = randn(4, 3, seed=60)
    assert R.nt_xent_loss(a, a + 1, reduction="none").shape == (8,)
    assert R.simcse_sup_loss(randn(9, 3, seed=61), reduction="none").shape == (3,)
    assert R.supcon_loss(randn(4, 3, 5, seed=62), reduction="none").shape == (12,)
    assert R.info_nce(a, a + 1, randn(6, 3, seed=63), reduction="none").shape == (4,)


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_gradcheck(name, reduction):
    call, ts, _ = make_case(name)
    # "none" checks the full Jacobian, i.e. arbitrary upstream gradients.
    assert torch.autograd.gradcheck(lambda *a: call(*a, reduction=reduction), tuple(ts))


@pytest.mark.parametrize("name", CASES)
def test_scalar_tensors_get_gradients(name):
    call, ts, _ = make_case(name)
    loss = call(*ts, reduction="mean")
    grads = torch.autograd.grad(loss, ts)
    for t, g in zip(ts, grads):
        if t.dim() == 0:
            assert g.dtype == F64 and torch.isfinite(g) and g != 0


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("dtype,tol", [(torch.float16, 5e-3), (torch.bfloat16, 2e-2)])
def test_half_inputs(name, dtype, tol):
    call, ts, _ = make_case(name, dtype=dtype, scalar_dtype=torch.float32)
    loss = call(*ts, reduction="mean")
    assert loss.dtype == torch.float32
    grads = torch.autograd.grad(loss, ts)
    for t, g in zip(ts, grads):
        assert g.dtype == t.dtype and torch.isfinite(g.float()).all()
    # fp64 on the same (rounded) inputs: the half path accumulates in fp32
    ts64 = [t.detach().double().requires_grad_() for t in ts]
    loss64 = call(*ts64, reduction="mean")
    grads64 = torch.autograd.grad(loss64, ts64)
    close(loss.double(), loss64, rtol=1e-5, atol=1e-6)
    for t, g, g64 in zip(ts, grads, grads64):
        if t.dim() > 0:
            close(g.double(), g64, rtol=tol, atol=tol * g64.abs().max().item())


@pytest.mark.parametrize("name", CASES)
def test_nan_propagates(name):
    call, ts, _ = make_case(name, grad=False)
    ts[0] = ts[0].clone()
    ts[0].view(-1)[0] = float("nan")  # lies in row 0, a counted anchor in every case
    assert torch.isnan(call(*ts, reduction="mean"))


@pytest.mark.parametrize("name", CASES)
def test_zero_row_is_finite(name):
    call, ts, _ = make_case(name, grad=False)
    ts[0] = ts[0].detach().clone()
    ts[0].view(-1, ts[0].shape[-1])[0] = 0.0
    ts[0].requires_grad_()
    loss = call(*ts, reduction="mean")
    (g,) = torch.autograd.grad(loss, ts[0])
    assert torch.isfinite(loss) and torch.isfinite(g).all()


def test_supcon_without_positives_is_zero():
    for f in (randn(5, 7, seed=64), randn(1, 1, 7, seed=65), randn(1, 7, seed=66)):
        f = f.requires_grad_()
        t = _t(0.1, F64, True)
        loss = R.supcon_loss(f, None, temperature=t)  # each sample its own class, one view
        assert loss.item() == 0.0
        gf, gt = torch.autograd.grad(loss, (f, t))
        assert torch.equal(gf, torch.zeros_like(gf)) and gt.item() == 0.0
        none = R.supcon_loss(f.detach(), None, reduction="none")
        assert torch.equal(none, torch.zeros_like(none))


def test_single_pair_edge_cases():
    # N = 1 where the losses are defined: a single candidate gives CE 0
    q = randn(1, 4, seed=67)
    assert R.info_nce(q, q + 1).item() == 0.0
    assert R.clip_loss(q, q + 1, 10.0).item() == 0.0
    assert R.n_pair_loss(q, q + 1).item() == 0.0
    assert R.nt_xent_loss(q, q + 1).item() == 0.0
    assert math.isfinite(R.siglip_loss(q, q + 1, 10.0, -10.0).item())
