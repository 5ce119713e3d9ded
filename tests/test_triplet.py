import pytest
import torch

import contrastive_kernels as ck
from contrastive_kernels import dispatch
from harness import DEVICE, KERNEL_BACKENDS, LossCase, compare, generator, loss_tests, randn


def _labelled(n, d, dtype, gen):
    # About three rows per class (at least two classes): most anchors have a positive and a
    # negative, some don't.
    labels = torch.randint(0, max(2, n // 3), (n,), generator=gen).to(DEVICE)
    return [randn((n, d), gen, dtype)], {"labels": labels, "margin": 0.5}


def _variant(**options):
    return LossCase(lambda *a, **k: ck.triplet_margin_loss(*a, **options, **k), _labelled,
                    scalar_names=("margin",), normalizes=options.get("normalize", False))


CASE = _variant()
globals().update(loss_tests(CASE))
globals().update(loss_tests(_variant(squared=True, normalize=True), "squared_normalized"))


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("squared", [False, True])
@pytest.mark.parametrize("normalize", [False, True])
def test_options(backend, squared, normalize):
    compare(_variant(squared=squared, normalize=normalize), backend, 40, 6, torch.float32,
            "none", generator("triplet", squared, normalize))


def _brute_force(x, labels):
    """Per anchor the farthest positive / nearest negative by exact distance, with Python
    loops: strict comparisons in index order, so the lowest index wins ties."""
    n = x.shape[0]
    pos, neg = [-1] * n, [-1] * n
    for i in range(n):
        best_p, best_n = None, None
        for j in range(n):
            if j == i:
                continue
            dist = float((x[i] - x[j]).pow(2).sum())
            if labels[i] == labels[j] and (best_p is None or dist > best_p):
                best_p, pos[i] = dist, j
            if labels[i] != labels[j] and (best_n is None or dist < best_n):
                best_n, neg[i] = dist, j
    return torch.tensor(pos), torch.tensor(neg)


def _mine(backend, x, labels):
    impl = dispatch.select(backend, x.device, "triplet_margin_loss")
    return impl.hardest_pairs(x, impl.inverse_norms(x, False), labels)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_ties_pick_the_lowest_index(backend):
    """Small integer coordinates: every distance is exact in fp32, so ties are exact and
    common; the mined indices equal the brute-force lowest-index choice."""
    gen = generator("triplet", "ties")
    n = 70 if backend != "triton" else 40
    x = torch.randint(-2, 3, (n, 3), generator=gen).float().to(DEVICE)
    labels = torch.randint(0, 4, (n,), generator=gen).to(DEVICE)
    pos, neg = _mine(backend, x, labels)
    want_pos, want_neg = _brute_force(x.cpu().double(), labels.cpu())
    assert torch.equal(pos.cpu(), want_pos) and torch.equal(neg.cpu(), want_neg)
    compare(LossCase(ck.triplet_margin_loss,
                     lambda *_: ([x], {"labels": labels, "margin": 0.5}),
                     scalar_names=("margin",), normalizes=False),
            backend, n, 3, torch.float32, "none", generator("triplet", "ties", "cmp"))


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_mining_matches_brute_force(backend):
    gen = generator("triplet", "brute")
    x = randn((37, 5), gen)
    labels = torch.randint(0, 6, (37,), generator=gen).to(DEVICE)
    pos, neg = _mine(backend, x, labels)
    want_pos, want_neg = _brute_force(x.cpu().double(), labels.cpu())
    assert torch.equal(pos.cpu(), want_pos) and torch.equal(neg.cpu(), want_neg)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_duplicate_rows(backend):
    """Exact duplicates: distance 0 to the copy (never the Gram form's noise), the copies
    tie and the gradient matches the reference's."""
    base = randn((10, 7), generator("triplet", "dup"))
    x = torch.cat([base, base[:4], base[2:3]])
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 3, 0, 1, 0, 2, 1]).to(DEVICE)
    compare(LossCase(ck.triplet_margin_loss,
                     lambda *_: ([x], {"labels": labels, "margin": 0.3}),
                     scalar_names=("margin",), normalizes=False),
            backend, 15, 7, torch.float32, "none", generator("triplet", "dup", "cmp"))


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("labels", ["single_class", "all_distinct"])
def test_label_extremes_exclude_every_anchor(backend, labels):
    """One class: no negatives; every sample its own class: no positives. Either way no
    anchor counts: loss 0, zero gradient, never NaN."""
    n = 9
    y = torch.zeros(n, dtype=torch.long) if labels == "single_class" else torch.arange(n)
    x = randn((n, 4), generator("triplet", labels)).requires_grad_()
    out = ck.triplet_margin_loss(x, y.to(DEVICE), backend=backend)
    out.backward()
    assert out.item() == 0.0 and not x.grad.any()
    pos, neg = _mine(backend, x.detach(), y.to(DEVICE))
    if labels == "single_class":
        assert (neg == -1).all() and (pos >= 0).all()
    else:
        assert (pos == -1).all() and (neg >= 0).all()


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_module_matches_functional(backend):
    (x,), kw = _labelled(12, 4, torch.float32, generator("triplet", "module"))
    mod = ck.TripletMarginLoss(margin=0.5, squared=True, backend=backend)
    torch.testing.assert_close(mod(x, kw["labels"]),
                               ck.triplet_margin_loss(x, kw["labels"], 0.5, squared=True,
                                                      backend="torch"))
