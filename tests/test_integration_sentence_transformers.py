"""The sentence-transformers drop-ins against the installed sentence-transformers 6.x:
loss and gradients over every configuration on every kernel backend, the model forward,
gradient caching with dropout on, the fallback, its own argument errors, no N×M tensor."""
import itertools
import warnings

import pytest
import torch

st_losses = pytest.importorskip("sentence_transformers.sentence_transformer.losses")
from sentence_transformers import util  # noqa: E402

from contrastive_kernels.integrations import sentence_transformers as ours  # noqa: E402
from contrastive_kernels.losses.multiple_negatives_ranking import HARDNESS_MODES  # noqa: E402
from contrastive_kernels.testing import (LargestTensor, assert_close, random_sentences,  # noqa: E402
                                         tiny_sentence_transformer)
from harness import DEVICE, KERNEL_BACKENDS, generator  # noqa: E402

ALL = ("query_to_doc", "query_to_query", "doc_to_query", "doc_to_doc")
DIRECTION_SETS = {"joint": [("query_to_doc",), ("query_to_doc", "doc_to_query"),
                            ("query_to_doc", "query_to_query"),
                            ("query_to_doc", "doc_to_doc"), ALL],
                  "per_direction": [("query_to_doc",), ("query_to_doc", "doc_to_query")]}
CONFIGS = [(dirs, mode, hardness, h, sim)
           for mode, sets in DIRECTION_SETS.items() for dirs in sets
           for hardness in HARDNESS_MODES for h in (0, 1, 3)
           for sim in ("cos_sim", "dot_score")]


def _embeddings(n, d, columns, dtype, gen, size=1.0):
    return [(torch.randn(n, d, generator=gen, dtype=torch.float64) * size).to(dtype)
            .requires_grad_() for _ in range(columns)]


def _loss_and_grads(loss, embeddings):
    out = loss.compute_loss_from_embeddings(embeddings, None)
    return out, torch.autograd.grad(out, embeddings)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_every_configuration_matches_sentence_transformers(backend):
    """Every direction set × partition mode × hardness mode × 0/1/3 hard-negative columns
    × cosine/dot, in fp64 (to 1e-10) and fp32 (the tolerance table, against
    sentence-transformers in fp64 on the same values): the parity matrix. The interpreted
    Triton engine runs it in fp32 only: the adapter makes the same engine calls in either
    dtype, fp64 exactness is checked on the other backends and Triton's fp64 kernels in the
    per-loss harness, and fp64 here doubled CI's longest Python test (224 s)."""
    dtypes = (torch.float64, torch.float32)
    if backend == "triton" and DEVICE.type == "cpu":
        dtypes = (torch.float32,)
    checked = 0
    for (dirs, mode, hardness, h, sim), dtype in itertools.product(CONFIGS, dtypes):
        kw = dict(scale=11.0, similarity_fct=getattr(util, sim), directions=dirs,
                  partition_mode=mode, hardness_mode=hardness, hardness_strength=0.35)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # hardness_mode with strength 0: their warning
            theirs = st_losses.MultipleNegativesRankingLoss(None, **kw)
            mine = ours.MultipleNegativesRankingLoss(None, backend=backend, **kw)
        gen = generator("st", dirs, mode, hardness, h, sim)
        # Unit-size rows for the dot product too (logits of order scale, as with cosine).
        emb = _embeddings(9, 6, 2 + h, dtype, gen, 1.0 if sim == "cos_sim" else 6 ** -0.5)
        ref_emb = [e.detach().double().requires_grad_() for e in emb]
        got, got_grads = _loss_and_grads(mine, emb)
        want, want_grads = _loss_and_grads(theirs, ref_emb)
        what = f"{backend} {dirs} {mode} {hardness} h={h} {sim} {dtype}"
        assert_close(got, want, dtype, what)
        for i, (a, b) in enumerate(zip(got_grads, want_grads)):
            assert a.dtype == dtype
            assert_close(a, b, dtype, f"{what}: grad of column {i}")
        checked += 1
    assert checked == len(dtypes) * len(CONFIGS) and len(CONFIGS) == 2 * 4 * 3 * (5 + 2)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """An offline BERT model in float64, so that a training step of either loss is exact
    to rounding and the comparison can be to 1e-10."""
    built = tiny_sentence_transformer(str(tmp_path_factory.mktemp("st_model")), dropout=0.1)
    return built.to(torch.float64)


def _features(model, columns, n, seed):
    gen = torch.Generator().manual_seed(seed)
    return [model.tokenize(random_sentences(n, gen)) for _ in range(columns)]


def _train_step(model, loss, features, seed):
    """Loss and every parameter's gradient of one training step, dropout on, the random
    state seeded identically for each loss."""
    model.train()
    model.zero_grad()
    torch.manual_seed(seed)
    out = loss(features, None)
    out.backward()
    return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()
                          if p.grad is not None}


def _assert_steps_equal(a, b):
    """Same loss and parameter gradients (float64 model), each relative to the largest
    parameter gradient: some are zero up to rounding (a key bias shifts every attention
    logit of a row alike)."""
    (loss_a, grads_a), (loss_b, grads_b) = a, b
    assert_close(loss_a, loss_b, torch.float64, "loss")
    assert grads_a.keys() == grads_b.keys() and grads_a
    scale = max(float(g.abs().max()) for g in grads_b.values())
    for name in grads_a:
        assert_close(grads_a[name], grads_b[name], torch.float64, name, floor=scale)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_forward_through_the_model_matches(model, backend):
    """forward(sentence_features, labels) with a real (offline) model and dropout on:
    the same loss and parameter gradients as sentence-transformers."""
    features = _features(model, 3, 6, seed=1)
    kw = dict(directions=ALL, hardness_mode="all_negatives", hardness_strength=0.2)
    _assert_steps_equal(
        _train_step(model, ours.MultipleNegativesRankingLoss(model, backend=backend, **kw),
                    features, 5),
        _train_step(model, st_losses.MultipleNegativesRankingLoss(model, **kw), features, 5))


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_symmetric_loss_matches(model, backend):
    features = _features(model, 2, 7, seed=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        mine = ours.MultipleNegativesSymmetricRankingLoss(model, scale=15.0, backend=backend)
        theirs = st_losses.MultipleNegativesSymmetricRankingLoss(model, scale=15.0)
    assert mine.directions == ("query_to_doc", "doc_to_query")
    assert mine.partition_mode == "per_direction"
    _assert_steps_equal(_train_step(model, mine, features, 3),
                        _train_step(model, theirs, features, 3))


def _chunked_uncached_step(model, features, mini_batch, seed, **kw):
    """The uncached loss on embeddings of a plain chunked forward with the graph (columns
    in order, mini-batches in order): the random-state consumption gradient caching
    promises to reproduce."""
    from sentence_transformers.base.losses.gradcache import _create_minibatch, _get_batch_size
    model.train()
    model.zero_grad()
    torch.manual_seed(seed)
    columns = []
    for feature in features:
        n = _get_batch_size(feature)
        columns.append(torch.cat([
            model(_create_minibatch(feature, b, b + mini_batch))["sentence_embedding"]
            for b in range(0, n, mini_batch)]))
    out = ours.MultipleNegativesRankingLoss(model, **kw).compute_loss_from_embeddings(
        columns, None)
    out.backward()
    return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()
                          if p.grad is not None}


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_cached_equals_uncached_with_dropout(model, backend):
    """CachedMultipleNegativesRankingLoss (mini-batches of 3 of 8 rows, dropout on) gives
    the loss and parameter gradients of the uncached loss over the same chunked forward,
    and those of sentence-transformers' own cached loss."""
    features = _features(model, 3, 8, seed=3)
    kw = dict(scale=12.0, directions=("query_to_doc", "query_to_query"),
              hardness_mode="hard_negatives", hardness_strength=0.3)
    cached = _train_step(model, ours.CachedMultipleNegativesRankingLoss(
        model, mini_batch_size=3, backend=backend, **kw), features, 9)
    _assert_steps_equal(cached, _chunked_uncached_step(model, features, 3, 9, **kw))
    _assert_steps_equal(cached, _train_step(model, st_losses.CachedMultipleNegativesRankingLoss(
        model, mini_batch_size=3, **kw), features, 9))


def test_cached_keeps_the_wrapped_loss_settings(model):
    loss = ours.CachedMultipleNegativesRankingLoss(model, scale=9.0, mini_batch_size=4,
                                                   backend="cpu")
    assert isinstance(loss.loss, ours.MultipleNegativesRankingLoss)
    assert loss.loss.backend == "cpu" and loss.scale == 9.0
    loss.scale = 13.0  # sentence-transformers delegates the assignment to the wrapped loss
    assert loss.loss.scale == 13.0
    assert loss.get_config_dict()["mini_batch_size"] == 4


def test_other_similarity_falls_back_with_a_warning():
    emb = _embeddings(6, 4, 3, torch.float64, generator("st", "fallback"))
    mine = ours.MultipleNegativesRankingLoss(None, similarity_fct=util.manhattan_sim)
    theirs = st_losses.MultipleNegativesRankingLoss(None, similarity_fct=util.manhattan_sim)
    with pytest.warns(UserWarning, match="manhattan_sim"):
        got = mine.compute_loss_from_embeddings(emb, None)
    torch.testing.assert_close(got, theirs.compute_loss_from_embeddings(emb, None))


BAD_ARGUMENTS = [dict(scale=0.0), dict(directions=()), dict(directions=("doc_to_query",)),
                 dict(directions=("query_to_doc", "sideways")),
                 dict(partition_mode="blocks"),
                 dict(partition_mode="per_direction", directions=("query_to_doc", "doc_to_doc")),
                 dict(hardness_mode="hardest"), dict(hardness_strength=-0.5)]


@pytest.mark.parametrize("kwargs", BAD_ARGUMENTS, ids=lambda k: ",".join(k))
def test_bad_arguments_raise_sentence_transformers_errors(kwargs):
    with pytest.raises(Exception) as theirs:
        st_losses.MultipleNegativesRankingLoss(None, **kwargs)
    with pytest.raises(type(theirs.value)) as mine:
        ours.MultipleNegativesRankingLoss(None, **kwargs)
    assert str(mine.value) == str(theirs.value)


def test_embedding_count_error_is_theirs():
    with pytest.raises(ValueError, match="Expected at least 2 embeddings, got 1"):
        ours.MultipleNegativesRankingLoss(None).compute_loss_from_embeddings(
            [torch.randn(3, 2)], None)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_no_nxm_tensor_on_the_integration_path(backend):
    """Every direction and two hard-negative columns (M = 3N): no tensor of N·M/4
    elements in forward or backward, while sentence-transformers' own builds one. N as in
    test_memory.py: large enough that the C++ CPU engine's per-thread tiles are small."""
    n = {"triton": 256, "cpu": 2048, "cuda": 4096}[backend]
    emb = _embeddings(n, 8, 3, torch.float32, generator("st", "memory"))
    kw = dict(directions=ALL, hardness_mode="in_batch_negatives", hardness_strength=0.2)
    for loss, should_fit in ((ours.MultipleNegativesRankingLoss(None, backend=backend, **kw),
                              True), (st_losses.MultipleNegativesRankingLoss(None, **kw), False)):
        mode = LargestTensor()
        with mode:
            loss.compute_loss_from_embeddings(emb, None).backward()
        assert (mode.largest < n * 3 * n // 4) == should_fit, (mode.largest, mode.op)
