import pytest
import torch

import contrastive_kernels as ck
from harness import KERNEL_BACKENDS, LossCase, generator, loss_tests, randn


def _views(n, d, dtype, gen):
    return [randn((n, d), gen, dtype), randn((n, d), gen, dtype)], {"temperature": 0.5}


CASE = LossCase(ck.nt_xent_loss, _views, scalar_names=("temperature",))

globals().update(loss_tests(CASE))


def _decoupled_views(n, d, dtype, gen):
    """DCL with per-row positive weights (both views' rows, as DCLW's)."""
    (z1, z2), kw = _views(n, d, dtype, gen)
    weight = torch.rand((n,), generator=gen, dtype=torch.float64).to(z1.device) + 0.5
    return [z1, z2], dict(kw, decoupled=True, positive_weight=weight)


globals().update(loss_tests(LossCase(ck.nt_xent_loss, _decoupled_views,
                                     scalar_names=("temperature",)), "decoupled"))


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_decoupled_leaves_the_positive_out(backend):
    """DCL's rows equal NT-Xent's minus the positive's share: ℓ_dcl = ℓ + log(1 − p_pos)
    where p_pos is the positive's softmax probability (checked in fp64)."""
    (z1, z2), _ = _views(6, 4, torch.float64, generator("ntx", "dcl"))
    plain = ck.nt_xent_loss(z1, z2, 0.5, reduction="none", backend=backend)
    dcl = ck.nt_xent_loss(z1, z2, 0.5, reduction="none", decoupled=True, backend=backend)
    z = torch.nn.functional.normalize(torch.cat([z1, z2]), dim=1)
    s = z @ z.T / 0.5
    s.fill_diagonal_(float("-inf"))
    p_pos = torch.softmax(s, 1)[torch.arange(12), (torch.arange(12) + 6) % 12]
    torch.testing.assert_close(dcl, plain + torch.log1p(-p_pos), rtol=1e-10, atol=1e-12)


def test_positive_weight_is_checked():
    z = torch.randn(4, 3)
    with pytest.raises(ValueError, match="positive_weight"):
        ck.nt_xent_loss(z, z, positive_weight=torch.ones(5))
    with pytest.raises(TypeError, match="positive_weight"):
        ck.nt_xent_loss(z, z, positive_weight=torch.ones(4, dtype=torch.int64))


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_none_has_two_rows_per_pair(backend):
    z1, z2 = (randn((5, 3), generator("ntx", i)) for i in range(2))
    assert ck.nt_xent_loss(z1, z2, reduction="none", backend=backend).shape == (10,)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_module_matches_functional(backend):
    (z1, z2), _ = _views(7, 5, torch.float32, generator("ntx", "module"))
    mod = ck.NTXentLoss(temperature=0.3, backend=backend)
    torch.testing.assert_close(mod(z1, z2), ck.nt_xent_loss(z1, z2, 0.3, backend="torch"))
