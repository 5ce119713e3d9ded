import pytest
import torch

import contrastive_kernels as ck
from harness import KERNEL_BACKENDS, LossCase, generator, loss_tests, randn


def _views(n, d, dtype, gen):
    return [randn((n, d), gen, dtype), randn((n, d), gen, dtype)], {"temperature": 0.5}


CASE = LossCase(ck.nt_xent_loss, _views, scalar_names=("temperature",))

globals().update(loss_tests(CASE))


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_none_has_two_rows_per_pair(backend):
    z1, z2 = (randn((5, 3), generator("ntx", i)) for i in range(2))
    assert ck.nt_xent_loss(z1, z2, reduction="none", backend=backend).shape == (10,)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_module_matches_functional(backend):
    (z1, z2), _ = _views(7, 5, torch.float32, generator("ntx", "module"))
    mod = ck.NTXentLoss(temperature=0.3, backend=backend)
    torch.testing.assert_close(mod(z1, z2), ck.nt_xent_loss(z1, z2, 0.3, backend="torch"))
