import pytest
import torch

import contrastive_kernels as ck
from harness import KERNEL_BACKENDS, LossCase, compare, generator, loss_tests, randn


def _pairs(n, d, dtype, gen):
    return [randn((n, d), gen, dtype), randn((n, d), gen, dtype)], {"logit_scale": 4.0}


def _clip(image_features, text_features, logit_scale, **kw):
    return ck.clip_loss(image_features, text_features, logit_scale, **kw)


CASE = LossCase(_clip, _pairs, scalar_names=("logit_scale",), normalizes=False)

globals().update(loss_tests(CASE))


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("n", [130, 257])
def test_column_statistics_across_persistent_programs(backend, n):
    """More row blocks than persistent programs: column log-sum-exp partials merge."""
    compare(CASE, backend, n, 5, torch.float32, "none", generator("clip", "persist", n))


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_normalize_inside(backend):
    case = LossCase(lambda *a, **k: ck.clip_loss(*a, normalize=True, **k), _pairs,
                    scalar_names=("logit_scale",))
    compare(case, backend, 17, 9, torch.float32, "none", generator("clip", "norm"))


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_open_clip_style_learnable_scale(backend):
    """logit_scale = exp(log_scale) as in open_clip: the gradient reaches log_scale."""
    (img, txt), _ = _pairs(9, 6, torch.float32, generator("clip", "learn"))
    grads = []
    for b in (backend, "torch"):
        log_scale = torch.tensor(2.6592, requires_grad=True)
        ck.ClipLoss(backend=b)(img, txt, log_scale.exp()).backward()
        grads.append(log_scale.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-6)
