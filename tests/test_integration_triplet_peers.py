"""The triplet drop-ins against the installed peers: pytorch-metric-learning's
TripletMarginLoss (batch-all, AvgNonZeroReducer) and sentence-transformers'
BatchAllTripletLoss / BatchSemiHardTripletLoss, loss and gradients in fp64 and fp32 on
every kernel backend, through the model, the fallbacks, their errors, no N×N tensor."""
import functools
import itertools
import warnings

import pytest
import torch

pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
st_losses = pytest.importorskip("sentence_transformers.sentence_transformer.losses")
from pytorch_metric_learning.distances import CosineSimilarity, LpDistance  # noqa: E402
from pytorch_metric_learning.reducers import MeanReducer  # noqa: E402

from contrastive_kernels.integrations import pytorch_metric_learning as ours_pml  # noqa: E402
from contrastive_kernels.integrations import sentence_transformers as ours_st  # noqa: E402
from contrastive_kernels.testing import (LargestTensor, assert_close, random_sentences,  # noqa: E402
                                         tiny_sentence_transformer)
from harness import KERNEL_BACKENDS, generator  # noqa: E402

EUCLIDEAN = st_losses.BatchHardTripletLossDistanceFunction.euclidean_distance
PML_CONFIGS = [dict(), dict(margin=0.3), dict(distance=LpDistance(normalize_embeddings=False)),
               dict(distance=LpDistance(power=2), margin=0.2),
               dict(distance=LpDistance(normalize_embeddings=False, power=2), margin=4.0)]
ST_CONFIGS = [(name, squared, margin) for name in ("BatchAllTripletLoss",
                                                   "BatchSemiHardTripletLoss")
              for squared in (False, True) for margin in (5.0, 1.0, 0.0)]


def _batch(n, d, classes, dtype, gen):
    x = torch.randn(n, d, generator=gen, dtype=torch.float64).to(dtype)
    return x, torch.randint(0, classes, (n,), generator=gen)


def _loss_and_grad(fn, x, labels):
    leaf = x.detach().clone().requires_grad_()
    out = fn(leaf, labels)
    (grad,) = torch.autograd.grad(out, leaf)
    return out.detach(), grad


def _parity(mine, theirs, x, labels, dtype, what):
    """Ours on x (dtype) against the peer on the same values in fp64."""
    got, got_grad = _loss_and_grad(mine, x, labels)
    want, want_grad = _loss_and_grad(theirs, x.double(), labels)
    assert got_grad.dtype == dtype
    assert_close(got, want, dtype, what)
    assert_close(got_grad, want_grad, dtype, f"{what}: gradient")


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_pytorch_metric_learning_parity(backend):
    """Every fused configuration × fp64/fp32 × batch shapes (many classes, two classes,
    pairs only): the parity matrix against TripletMarginLoss + AvgNonZeroReducer."""
    checked = 0
    for kw, dtype, (n, classes) in itertools.product(
            PML_CONFIGS, (torch.float64, torch.float32), ((48, 12), (40, 2), (30, 15))):
        x, labels = _batch(n, 8, classes, dtype, generator("pml", str(kw), n, dtype))
        mine = ours_pml.TripletMarginLoss(backend=backend, **kw)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # the fused path: no fallback warning
            _parity(mine, pml_losses.TripletMarginLoss(**kw), x, labels, dtype,
                    f"{backend} {kw} {dtype} n={n}")
        checked += 1
    assert checked == len(PML_CONFIGS) * 2 * 3


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_sentence_transformers_parity(backend):
    """Both losses × Euclidean / squared × three margins × fp64/fp32 × batch shapes."""
    checked = 0
    for (name, squared, margin), dtype, (n, classes) in itertools.product(
            ST_CONFIGS, (torch.float64, torch.float32), ((48, 12), (40, 2), (30, 15))):
        dist = functools.partial(EUCLIDEAN, squared=True) if squared else EUCLIDEAN
        x, labels = _batch(n, 8, classes, dtype, generator("st-triplet", name, n, dtype))
        mine = getattr(ours_st, name)(None, distance_metric=dist, margin=margin,
                                      backend=backend)
        theirs = getattr(st_losses, name)(None, distance_metric=dist, margin=margin)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            _parity(lambda e, y: mine.compute_loss_from_embeddings([e], y),
                    lambda e, y: theirs.compute_loss_from_embeddings([e], y), x, labels,
                    dtype, f"{backend} {name} squared={squared} margin={margin} {dtype}")
        checked += 1
    assert checked == len(ST_CONFIGS) * 2 * 3


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    built = tiny_sentence_transformer(str(tmp_path_factory.mktemp("st_triplet")), dropout=0.1)
    return built.to(torch.float64)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("name", ["BatchAllTripletLoss", "BatchSemiHardTripletLoss"])
def test_sentence_transformers_forward_through_the_model(model, backend, name):
    """forward(sentence_features, labels) with dropout on: the same loss and parameter
    gradients as sentence-transformers' own."""
    gen = torch.Generator().manual_seed(3)
    features = [model.tokenize(random_sentences(12, gen))]
    labels = torch.randint(0, 4, (12,), generator=gen)
    results = []
    for loss in (getattr(ours_st, name)(model, margin=1.0, backend=backend),
                 getattr(st_losses, name)(model, margin=1.0)):
        model.train()
        model.zero_grad()
        torch.manual_seed(5)
        out = loss(features, labels)
        out.backward()
        results.append((out.detach(), {k: p.grad.clone() for k, p in model.named_parameters()
                                       if p.grad is not None}))
    (a, grads_a), (b, grads_b) = results
    assert_close(a, b, torch.float64, name)
    scale = max(float(g.abs().max()) for g in grads_b.values())
    for key in grads_b:
        assert_close(grads_a[key], grads_b[key], torch.float64, key, floor=scale)


UNFUSED_PML = [(dict(swap=True), "swap"), (dict(smooth_loss=True), "smooth_loss"),
               (dict(triplets_per_anchor=3), "triplets_per_anchor"),
               (dict(distance=CosineSimilarity()), "distance"),
               (dict(reducer=MeanReducer()), "reducer")]


@pytest.mark.parametrize("kwargs,why", UNFUSED_PML, ids=[w for _, w in UNFUSED_PML])
def test_pytorch_metric_learning_falls_back_with_a_warning(kwargs, why):
    x, labels = _batch(20, 4, 5, torch.float64, generator("pml", "fallback", why))
    torch.manual_seed(0)  # triplets_per_anchor samples
    with pytest.warns(UserWarning, match=why):
        got = ours_pml.TripletMarginLoss(**kwargs)(x, labels)
    torch.manual_seed(0)
    torch.testing.assert_close(got, pml_losses.TripletMarginLoss(**kwargs)(x, labels))


def test_pytorch_metric_learning_miner_indices_fall_back():
    x, labels = _batch(20, 4, 5, torch.float64, generator("pml", "miner"))
    triplets = (torch.tensor([0, 1]), torch.tensor([2, 3]), torch.tensor([4, 5]))
    with pytest.warns(UserWarning, match="indices_tuple"):
        got = ours_pml.TripletMarginLoss()(x, labels, triplets)
    torch.testing.assert_close(got, pml_losses.TripletMarginLoss()(x, labels, triplets))


def test_sentence_transformers_cosine_falls_back_with_a_warning():
    x, labels = _batch(20, 4, 5, torch.float64, generator("st", "cosine"))
    cosine = st_losses.BatchHardTripletLossDistanceFunction.cosine_distance
    for name in ("BatchAllTripletLoss", "BatchSemiHardTripletLoss"):
        mine = getattr(ours_st, name)(None, distance_metric=cosine)
        theirs = getattr(st_losses, name)(None, distance_metric=cosine)
        with pytest.warns(UserWarning, match="cosine_distance"):
            got = mine.compute_loss_from_embeddings([x], labels)
        torch.testing.assert_close(got, theirs.compute_loss_from_embeddings([x], labels))


@pytest.mark.parametrize("name", ["BatchAllTripletLoss", "BatchSemiHardTripletLoss"])
def test_sentence_transformers_label_count_error_is_theirs(name):
    x = torch.randn(6, 3)
    with pytest.raises(ValueError) as theirs:
        getattr(st_losses, name)(None).compute_loss_from_embeddings([x], torch.zeros(5))
    with pytest.raises(ValueError) as mine:
        getattr(ours_st, name)(None).compute_loss_from_embeddings([x], torch.zeros(5))
    assert str(mine.value) == str(theirs.value)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_no_nxn_tensor_on_the_integration_paths(backend):
    """Our drop-ins hold no tensor of N²/4 elements; the peers' own do (pytorch-metric-
    learning's triplet index lists, sentence-transformers' distance matrix)."""
    # The emulated CUDA engine runs its blocks one after another: 1024 rows keep it short.
    n = {"triton": 256, "cpu": 2048, "cuda": 1024}[backend]
    x, labels = _batch(n, 8, n // 4, torch.float32, generator("triplet-peers", "memory"))
    cases = [(ours_pml.TripletMarginLoss(backend=backend), True),
             (lambda e, y: ours_st.BatchSemiHardTripletLoss(None, backend=backend)
              .compute_loss_from_embeddings([e], y), True),
             (lambda e, y: ours_st.BatchAllTripletLoss(None, backend=backend)
              .compute_loss_from_embeddings([e], y), True),
             (lambda e, y: st_losses.BatchSemiHardTripletLoss(None)
              .compute_loss_from_embeddings([e], y), False)]
    for fn, should_fit in cases:
        leaf = x.clone().requires_grad_()
        mode = LargestTensor()
        with mode:
            fn(leaf, labels).backward()
        assert (mode.largest < n * n // 4) == should_fit, (mode.largest, mode.op)
