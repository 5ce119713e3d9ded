import pytest
import torch

import contrastive_kernels as ck
from harness import DEVICE, KERNEL_BACKENDS, LossCase, compare, generator, loss_tests, randn


def _labelled(n, d, dtype, gen):
    # About three samples per class, so most anchors have positives and some may not.
    labels = torch.randint(0, max(1, n // 3), (n,), generator=gen).to(DEVICE)
    return [randn((n, d), gen, dtype)], {"labels": labels, "temperature": 0.5,
                                         "base_temperature": 0.07}


def _views(n, d, dtype, gen):
    b = max(1, n // 2)
    labels = torch.randint(0, max(1, b // 2), (b,), generator=gen).to(DEVICE)
    return [randn((b, 2, d), gen, dtype)], {"labels": labels, "temperature": 0.5}


LABELLED = LossCase(ck.supcon_loss, _labelled,
                    scalar_names=("temperature", "base_temperature"), normalizes=False)
VIEWS = LossCase(ck.supcon_loss, _views, scalar_names=("temperature",), normalizes=False)

globals().update(loss_tests(LABELLED))

globals().update(loss_tests(VIEWS, "views"))


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_unlabelled_views_are_simclr(backend):
    def make(n, d, dtype, gen):
        return [randn((n, 3, d), gen, dtype)], {"temperature": 0.3}
    compare(LossCase(ck.supcon_loss, make, scalar_names=("temperature",)), backend, 11, 6,
            torch.float32, "none", generator("supcon", "simclr"))


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("labels", ["single_class", "all_distinct"])
def test_label_extremes(backend, labels):
    n = 9
    y = torch.zeros(n, dtype=torch.long) if labels == "single_class" else torch.arange(n)
    x = randn((n, 4), generator("supcon", labels)).requires_grad_()
    out = ck.supcon_loss(x, y.to(DEVICE), backend=backend)
    ref = ck.supcon_loss(x, y.to(DEVICE), backend="torch")
    torch.testing.assert_close(out, ref)
    out.backward()
    assert torch.isfinite(x.grad).all()
    if labels == "all_distinct":  # nobody has a positive: 0 loss, zero gradient
        assert out.item() == 0.0 and not x.grad.any()


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_module_matches_functional(backend):
    (f,), kw = _views(8, 4, torch.float32, generator("supcon", "module"))
    mod = ck.SupConLoss(temperature=0.5, backend=backend)
    torch.testing.assert_close(mod(f, kw["labels"]),
                               ck.supcon_loss(f, kw["labels"], 0.5, backend="torch"))
