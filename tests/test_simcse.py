import pytest
import torch

import contrastive_kernels as ck
from harness import KERNEL_BACKENDS, LossCase, generator, loss_tests, randn


def _unsup(n, d, dtype, gen):
    return [randn((2 * n, d), gen, dtype)], {"lamda": 0.05}


def _sup(n, d, dtype, gen):
    return [randn((3 * n, d), gen, dtype)], {"lamda": 0.05}


UNSUP = LossCase(ck.simcse_unsup_loss, _unsup, scalar_names=("lamda",))
SUP = LossCase(ck.simcse_sup_loss, _sup, scalar_names=("lamda",))

globals().update(loss_tests(UNSUP, "unsup"))

globals().update(loss_tests(SUP, "sup"))


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_modules_match_functional(backend):
    y = randn((12, 5), generator("simcse", "module"))
    torch.testing.assert_close(ck.SimCSEUnsupLoss(lamda=0.1, backend=backend)(y),
                               ck.simcse_unsup_loss(y, 0.1, backend="torch"))
    torch.testing.assert_close(ck.SimCSESupLoss(lamda=0.1, backend=backend)(y),
                               ck.simcse_sup_loss(y, 0.1, backend="torch"))
