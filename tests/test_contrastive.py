import pytest
import torch

import contrastive_kernels as ck
from harness import DEVICE, KERNEL_BACKENDS, LossCase, compare, generator, loss_tests, randn


def _labelled(n, d, dtype, gen):
    # Unit-scale rows (distances about sqrt(2)) and a margin between 0 and the largest
    # distance, so both branches of the negative term (inside and outside the margin) occur.
    labels = torch.randint(0, max(1, n // 3), (n,), generator=gen).to(DEVICE)
    x = randn((max(n, 2), d), gen, torch.float64) * d ** -0.5
    if n < 2:
        labels = torch.tensor([0, 1], device=DEVICE)
    return [x.to(dtype)], {"labels": labels, "margin": 1.3}


CASE = LossCase(ck.contrastive_loss, _labelled, scalar_names=("margin",), normalizes=False)

globals().update(loss_tests(CASE))


def _compare_on(backend, x, labels, margin, tag):
    def make(n, d, dtype, gen):
        return [x.to(dtype)], {"labels": labels.to(DEVICE), "margin": margin}
    compare(LossCase(ck.contrastive_loss, make, scalar_names=("margin",), normalizes=False),
            backend, x.shape[0], x.shape[1], torch.float32, "none", generator("contr", tag))


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("same_label", [True, False])
def test_duplicate_rows(backend, same_label):
    """Duplicated rows sit at d = 0 exactly (not at the Gram form's rounding noise): a
    negative pair there has value margin² and no gradient, a positive pair 0."""
    base = randn((12, 9), generator("contr", "dup")).double()
    x = torch.cat([base, base[:5], base[3:4]])  # rows 12..16 copy 0..4, row 17 copies 3
    labels = torch.arange(18) % 4
    if same_label:
        labels[12:17] = labels[:5]
        labels[17] = labels[3]
    _compare_on(backend, x, labels, 1.7, ("dup", same_label))


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_near_coincident_pairs(backend):
    """Pairs 1e-3 apart (d² far below the Gram form's accuracy of eps·‖x‖²·D in fp32)."""
    base = randn((10, 33), generator("contr", "near")).double()
    x = torch.cat([base, base + 1e-3 * randn((10, 33), generator("contr", "near2")).double()])
    labels = torch.arange(20) % 3
    _compare_on(backend, x, labels, 1.0, "near")


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("labels", ["single_class", "all_distinct"])
def test_label_extremes(backend, labels):
    n = 21
    y = torch.zeros(n, dtype=torch.long) if labels == "single_class" else torch.arange(n)
    x = randn((n, 6), generator("contr", labels)).double() * 0.4
    _compare_on(backend, x, y, 2.0, labels)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_zero_margin_has_no_negative_term(backend):
    x = randn((15, 4), generator("contr", "m0")).double()
    _compare_on(backend, x, torch.arange(15) % 2, 0.0, "m0")


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_large_batch_tiles_and_partitions(backend):
    """More rows than one tile in both directions (several partitions; ragged last tile)."""
    n = 300 if backend != "triton" else 140
    x = randn((n, 5), generator("contr", "big")).double() * 0.5
    _compare_on(backend, x, torch.arange(n) % 7, 1.0, "big")


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_module_matches_functional(backend):
    (x,), kw = _labelled(10, 4, torch.float32, generator("contr", "module"))
    mod = ck.ContrastiveLoss(margin=1.3, backend=backend)
    torch.testing.assert_close(mod(x, kw["labels"]),
                               ck.contrastive_loss(x, kw["labels"], 1.3, backend="torch"))
