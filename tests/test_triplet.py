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
STRIP_MINING = ["batch_all", "semi_hard"]
for _mining in STRIP_MINING:
    globals().update(loss_tests(_variant(mining=_mining), _mining))
    globals().update(loss_tests(_variant(mining=_mining, squared=True, normalize=True),
                                f"{_mining}_squared_normalized"))


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("mining", ["batch_hard"] + STRIP_MINING)
@pytest.mark.parametrize("squared", [False, True])
@pytest.mark.parametrize("normalize", [False, True])
def test_options(backend, mining, squared, normalize):
    compare(_variant(mining=mining, squared=squared, normalize=normalize), backend, 40, 6,
            torch.float32, "none", generator("triplet", mining, squared, normalize))


def _enumerated(x, labels, margin, mining, squared):
    """(per-anchor sums (N,), count) by Python loops over every triplet / positive pair,
    exact distances from the differences: the independent check of both the reference
    and the kernels. Semi-hard ties go to the lowest index (only the gradient sees it)."""
    n = x.shape[0]
    dist = [[float((x[i] - x[j]).pow(2).sum()) for j in range(n)] for i in range(n)]
    if not squared:
        dist = [[v ** 0.5 for v in row] for row in dist]
    rows, count = [0.0] * n, 0
    for a in range(n):
        negs = [k for k in range(n) if labels[k] != labels[a]]
        for p in range(n):
            if p == a or labels[p] != labels[a]:
                continue
            if mining == "batch_all":
                for k in negs:
                    loss = dist[a][p] - dist[a][k] + margin
                    if loss > 0:
                        rows[a] += loss
                        count += 1
                continue
            count += 1
            beyond = [dist[a][k] for k in negs if dist[a][k] > dist[a][p]]
            d_an = min(beyond) if beyond else max((dist[a][k] for k in negs), default=0.0)
            rows[a] += max(0.0, dist[a][p] - d_an + margin)
    return torch.tensor(rows, dtype=torch.float64), count


def _strip_inputs(kind, n, d):
    gen = generator("triplet", "strips", kind, n)
    labels = torch.randint(0, max(2, n // 4), (n,), generator=gen)
    if kind == "ties":  # small integers: exact distances, many equal
        x = torch.randint(-2, 3, (n, d), generator=gen).double()
    elif kind == "duplicates":
        x = torch.randn(n, d, generator=gen, dtype=torch.float64)
        x[n // 2:] = x[: n - n // 2].clone()
        labels[n // 2:] = labels[: n - n // 2].clone()
    else:
        x = torch.randn(n, d, generator=gen, dtype=torch.float64)
    if kind == "one_class":
        labels.zero_()
    if kind == "own_class":
        labels = torch.arange(n)
    return x, labels


@pytest.fixture(params=["sorted", "direct"])
def small_strips(monkeypatch, request):
    """Strips of 3 rows, so every test crosses several strips and a ragged last one; each
    test runs on both strip paths (sorted rows, and the direct comparison against few
    positives), whatever the class sizes."""
    from contrastive_kernels.losses import triplet_strips
    monkeypatch.setattr(triplet_strips, "STRIP_ELEMENTS", 1)
    monkeypatch.setattr(triplet_strips, "MIN_STRIP_ROWS", 3)
    monkeypatch.setattr(triplet_strips, "DIRECT_SLOTS", 0 if request.param == "sorted"
                        else 1 << 30)
    return request.param


@pytest.mark.parametrize("backend", ["torch"] + KERNEL_BACKENDS)
@pytest.mark.parametrize("mining", STRIP_MINING)
@pytest.mark.parametrize("squared", [False, True])
@pytest.mark.parametrize("kind", ["random", "ties", "duplicates", "one_class", "own_class"])
def test_strip_mining_equals_enumeration(backend, mining, squared, kind, small_strips):
    """fp64, every triplet enumerated in Python: the per-anchor sums and the mean (the
    reference, backend "torch", is held to the same enumeration)."""
    x, labels = _strip_inputs(kind, 23, 3)
    margin = 1.5 if squared else 0.8
    rows, count = _enumerated(x, labels.tolist(), margin, mining, squared)
    x, labels = x.to(DEVICE), labels.to(DEVICE)
    got = ck.triplet_margin_loss(x, labels, margin, mining=mining, squared=squared,
                                 reduction="none", backend=backend).cpu()
    torch.testing.assert_close(got, rows, rtol=1e-12, atol=1e-12)
    mean = ck.triplet_margin_loss(x, labels, margin, mining=mining, squared=squared,
                                  backend=backend).cpu()
    torch.testing.assert_close(mean, rows.sum() / max(count, 1), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("mining", STRIP_MINING)
@pytest.mark.parametrize("kind", ["ties", "duplicates"])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_strip_gradients_with_ties_and_duplicates(backend, mining, kind, reduction,
                                                  small_strips):
    """Exact ties (the semi-hard negative goes to the lowest index) and duplicate rows
    (d = 0: no gradient through that pair): the gradient equals the reference's."""
    x, labels = _strip_inputs(kind, 23, 3)
    x, labels = x.to(DEVICE), labels.to(DEVICE)
    upstream = torch.randn(23 if reduction == "none" else (), dtype=torch.float64,
                           generator=generator("triplet", "ties-up", kind)).to(DEVICE)
    grads = []
    for b in (backend, "torch"):
        leaf = x.clone().requires_grad_()
        out = ck.triplet_margin_loss(leaf, labels, 0.8, mining=mining, reduction=reduction,
                                     backend=b)
        (out * upstream).sum().backward()
        grads.append(leaf.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-10, atol=1e-12)


def test_the_enumeration_check_can_fail(small_strips):
    """Plant a wrong tie rule (≥ instead of > for 'farther than the positive'; in the
    sorted path's search, or the direct path's comparison): the enumeration disagrees
    with it on the tied inputs."""
    x, labels = _strip_inputs("ties", 23, 3)
    rows, _ = _enumerated(x, labels.tolist(), 0.8, "semi_hard", False)
    from contrastive_kernels.losses import triplet_strips
    original_search, original_direct = torch.searchsorted, triplet_strips._semi_hard_direct

    def planted_search(seq, values, side="left", **kw):
        return original_search(seq, values, side="left", **kw)

    def planted_direct(d, neg, slot_d):  # "at least as far" instead of "farther"
        return original_direct(d, neg, torch.nextafter(slot_d, torch.zeros_like(slot_d)))

    triplet_strips.torch.searchsorted = planted_search
    triplet_strips._semi_hard_direct = planted_direct
    try:
        got = ck.triplet_margin_loss(x.to(DEVICE), labels.to(DEVICE), 0.8, mining="semi_hard",
                                     reduction="none", backend=KERNEL_BACKENDS[-1])
    finally:
        triplet_strips.torch.searchsorted = original_search
        triplet_strips._semi_hard_direct = original_direct
    assert not torch.allclose(got.cpu(), rows)


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
@pytest.mark.parametrize("mining", STRIP_MINING)
@pytest.mark.parametrize("labels", ["single_class", "all_distinct"])
def test_strip_label_extremes(backend, mining, labels):
    """No triplet at all: batch-all is 0 with zero gradient either way. Semi-hard over one
    class has positive pairs without negatives: each is relu(d_ap − 0 + margin), the
    row minimum (the anchor itself) standing in for the negative, as sentence-transformers
    and TensorFlow Addons compute it; every sample its own class: no pairs, 0."""
    n = 9
    y = torch.zeros(n, dtype=torch.long) if labels == "single_class" else torch.arange(n)
    x = randn((n, 4), generator("triplet", labels, mining)).requires_grad_()
    out = ck.triplet_margin_loss(x, y.to(DEVICE), mining=mining, backend=backend)
    out.backward()
    if mining == "semi_hard" and labels == "single_class":
        ref = ck.triplet_margin_loss(x.detach(), y.to(DEVICE), mining=mining, backend="torch")
        torch.testing.assert_close(out, ref)
        assert out.item() > 0.2 and x.grad.abs().sum() > 0
    else:
        assert out.item() == 0.0 and not x.grad.any()


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_module_matches_functional(backend):
    (x,), kw = _labelled(12, 4, torch.float32, generator("triplet", "module"))
    for mining in ["batch_hard"] + STRIP_MINING:
        mod = ck.TripletMarginLoss(margin=0.5, mining=mining, squared=True, backend=backend)
        torch.testing.assert_close(mod(x, kw["labels"]),
                                   ck.triplet_margin_loss(x, kw["labels"], 0.5, mining=mining,
                                                          squared=True, backend="torch"))


def test_unknown_mining_is_refused():
    x = torch.randn(6, 3)
    with pytest.raises(ValueError, match="mining"):
        ck.triplet_margin_loss(x, torch.zeros(6, dtype=torch.long), mining="hard")


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("mining", STRIP_MINING)
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_strip_mining_traces_in_one_graph(backend, mining, reduction):
    """The strips are one custom operator: fullgraph=True traces, and aot_eager gives the
    eager values and gradients bitwise."""
    (x,), kw = _labelled(19, 5, torch.float32, generator("triplet", "compile", mining))
    upstream = torch.randn(19 if reduction == "none" else (),
                           generator=generator("triplet", "compile-up")).to(DEVICE)

    def step(leaf):
        out = ck.triplet_margin_loss(leaf, kw["labels"], 0.5, mining=mining,
                                     reduction=reduction, backend=backend)
        return (out * upstream).sum()

    results = []
    for fn in (step, torch.compile(step, backend="aot_eager", fullgraph=True)):
        torch._dynamo.reset()
        leaf = x.clone().requires_grad_()
        out = fn(leaf)
        out.backward()
        results.append((out.detach(), leaf.grad))
    torch.testing.assert_close(results[1][0], results[0][0], rtol=0, atol=0)
    torch.testing.assert_close(results[1][1], results[0][1], rtol=0, atol=0)
