"""multiple_negatives_ranking_loss (sentence-transformers' MNRL) on every kernel backend
against the materialized reference: every direction set, both partition modes, every
hardness mode, 0-2 hard-negative columns, the standard test set on two configurations."""
import itertools

import pytest
import torch

import contrastive_kernels as ck
from contrastive_kernels.losses.multiple_negatives_ranking import DIRECTIONS, HARDNESS_MODES
from harness import KERNEL_BACKENDS, LossCase, compare, generator, loss_tests, randn

ALL = DIRECTIONS
JOINT_SETS = [("query_to_doc",), ("query_to_doc", "doc_to_query"),
              ("query_to_doc", "query_to_query"), ("query_to_doc", "doc_to_doc"), ALL]
PER_DIRECTION_SETS = [("query_to_doc",), ("query_to_doc", "doc_to_query")]
CONFIGS = [(dirs, "joint", mode, h) for dirs in JOINT_SETS for mode in HARDNESS_MODES
           for h in (0, 1, 2)] + \
          [(dirs, "per_direction", mode, h) for dirs in PER_DIRECTION_SETS
           for mode in HARDNESS_MODES for h in (0, 1, 2)]


def _case(directions, partition_mode, hardness_mode, hard_columns, normalize=True):
    def make(n, d, dtype, gen):
        cols = [randn((n, d), gen, dtype) for _ in range(2 + hard_columns)]
        return cols, {"scale": 7.0, "directions": directions, "partition_mode": partition_mode,
                      "hardness_mode": hardness_mode, "hardness_strength": 0.4,
                      "normalize": normalize}
    return LossCase(ck.multiple_negatives_ranking_loss, make, scalar_names=("scale",),
                    normalizes=normalize)


# The standard set (shapes, dtypes, reductions, gradcheck, determinism, NaN, zero rows) on
# the heaviest joint configuration and on a per-direction one. Without a hardness mode:
# its stop-gradient offset makes the gradient differ from the numerical derivative by
# design (gradcheck would fail on the reference too); the hardness modes are compared with
# the reference's gradients in test_every_configuration.
globals().update(loss_tests(_case(ALL, "joint", None, 2), "joint"))
globals().update(loss_tests(_case(("query_to_doc", "doc_to_query"), "per_direction",
                                  None, 1), "per_direction"))


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("config", CONFIGS, ids=[
    f"{'+'.join(d.replace('_to_', '2') for d in c[0])}-{c[1]}-{c[2]}-h{c[3]}" for c in CONFIGS])
def test_every_configuration(backend, config):
    """Loss and gradients (random upstream, reduction none) of every configuration, fp64
    (the kernels' exactness) and fp32 (the tolerance table), cosine and dot."""
    dirs, mode, hardness, h = config
    # The interpreted Triton engine is slow: fp64 cosine there (fp32 and the dot product
    # on every configuration run through it in the sentence-transformers parity test).
    pairs = ((torch.float64, True),) if backend == "triton" else \
        ((torch.float64, True), (torch.float32, False))
    for dtype, normalize in pairs:
        compare(_case(dirs, mode, hardness, h, normalize), backend, 9, 5, dtype, "none",
                generator("mnrl", config, dtype))


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_single_row_batch(backend):
    """N = 1: query_to_query and doc_to_doc have no candidates left (a -inf part of the
    joint partition); the loss and gradients stay finite and equal the reference."""
    compare(_case(ALL, "joint", "hard_negatives", 1), backend, 1, 4, torch.float64, "none",
            generator("mnrl", "one"))


def test_bad_options_name_the_argument():
    q = torch.randn(4, 3)
    with pytest.raises(ValueError, match="query_to_doc"):
        ck.multiple_negatives_ranking_loss(q, q, directions=("doc_to_query",))
    with pytest.raises(ValueError, match="directions"):
        ck.multiple_negatives_ranking_loss(q, q, directions=("sideways", "query_to_doc"))
    with pytest.raises(ValueError, match="per_direction"):
        ck.multiple_negatives_ranking_loss(q, q, partition_mode="per_direction",
                                           directions=("query_to_doc", "doc_to_doc"))
    with pytest.raises(ValueError, match="hardness_mode"):
        ck.multiple_negatives_ranking_loss(q, q, hardness_mode="hardest")
    with pytest.raises(ValueError, match="hardness_strength"):
        ck.multiple_negatives_ranking_loss(q, q, hardness_strength=-1.0)
    with pytest.raises(ValueError, match="scale"):
        ck.multiple_negatives_ranking_loss(q, q, scale=0.0)
    with pytest.raises(ValueError, match=r"hard_negatives\[0\]"):
        ck.multiple_negatives_ranking_loss(q, q, torch.randn(5, 3))


def test_boost_gradient_is_the_stop_gradient_offset():
    """The boosted engine call differentiates as s·cos + α·stop_grad(cos): checked with a
    learnable scale, whose gradient must be Σ p·cos (not scaled by s/(s+α))."""
    gen = generator("mnrl", "boost")
    q, d, h = (randn((6, 4), gen, torch.float64).requires_grad_() for _ in range(3))

    def grads(backend):
        s = torch.tensor(5.0, dtype=torch.float64, requires_grad=True)
        loss = ck.multiple_negatives_ranking_loss(q, d, h, scale=s, hardness_mode="all_negatives",
                                                  hardness_strength=0.7, backend=backend)
        return torch.autograd.grad(loss, (q, d, h, s))

    want = grads("torch")
    for backend in KERNEL_BACKENDS:
        for a, b in zip(grads(backend), want):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_module_matches_functional(backend):
    gen = generator("mnrl", "module")
    q, d, h = (randn((7, 5), gen) for _ in range(3))
    kw = dict(scale=9.0, directions=("query_to_doc", "doc_to_query"),
              partition_mode="per_direction", hardness_mode="hard_negatives",
              hardness_strength=0.5)
    mod = ck.MultipleNegativesRankingLoss(backend=backend, **kw)
    torch.testing.assert_close(mod(q, d, h), ck.multiple_negatives_ranking_loss(
        q, d, h, backend="torch", **kw))
