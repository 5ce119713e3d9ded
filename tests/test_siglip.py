import pytest
import torch

import contrastive_kernels as ck
from harness import KERNEL_BACKENDS, LossCase, compare, generator, loss_tests, randn


def _pairs(n, d, dtype, gen):
    return ([randn((n, d), gen, dtype), randn((n, d), gen, dtype)],
            {"logit_scale": 3.0, "logit_bias": -2.0})


def _siglip(image_features, text_features, logit_scale, logit_bias, **kw):
    return ck.siglip_loss(image_features, text_features, logit_scale, logit_bias, **kw)


CASE = LossCase(_siglip, _pairs, scalar_names=("logit_scale", "logit_bias"), normalizes=False)

globals().update(loss_tests(CASE))


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_normalize_inside(backend):
    case = LossCase(lambda *a, **k: _siglip(*a, normalize=True, **k), _pairs,
                    scalar_names=("logit_scale", "logit_bias"))
    compare(case, backend, 17, 9, torch.float32, "none", generator("siglip", "norm"))


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("scale,bias", [(10.0, -10.0), (100.0, 5.0), (0.0, 0.0)])
def test_saturated_and_degenerate_logits(backend, scale, bias):
    """open_clip's init (10, -10); large logits where σ saturates (|u| up to ~100, where a
    naive log(1 + e^u) overflows); scale 0 (every logit is the bias)."""
    def make(n, d, dtype, gen):
        return ([randn((n, d), gen, dtype), randn((n, d), gen, dtype)],
                {"logit_scale": scale, "logit_bias": bias})
    case = LossCase(lambda *a, **k: _siglip(*a, normalize=True, **k), make,
                    scalar_names=("logit_scale", "logit_bias"))
    compare(case, backend, 33, 16, torch.float32, "none", generator("siglip", scale, bias))


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_open_clip_style_learnable_parameters(backend):
    """logit_scale = exp(t') and logit_bias as learnable leaves (open_clip's SigLIP init):
    the gradient reaches both, equal to the reference's."""
    (img, txt), _ = _pairs(9, 6, torch.float32, generator("siglip", "learn"))
    grads = []
    for b in (backend, "torch"):
        t_prime = torch.tensor(2.302585, requires_grad=True)
        bias = torch.tensor(-10.0, requires_grad=True)
        ck.SigLipLoss(normalize=True, backend=b)(img, txt, t_prime.exp(), bias).backward()
        grads.append(torch.stack([t_prime.grad, bias.grad]))
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_no_gradient_requested(backend):
    """Under no_grad (or with no leaf requiring grad) the forward-only pass runs."""
    (img, txt), kw = _pairs(20, 5, torch.float32, generator("siglip", "nograd"))
    with torch.no_grad():
        out = ck.siglip_loss(img, txt, 3.0, -2.0, backend=backend)
    torch.testing.assert_close(out, ck.siglip_loss(img, txt, 3.0, -2.0, backend="torch"))
