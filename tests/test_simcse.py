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

(test_unsup_matches_reference_none, test_unsup_matches_reference_reduced, test_unsup_dtypes,
 test_unsup_gradcheck, test_unsup_deterministic_two_pass_backward, test_unsup_nan_propagates,
 test_unsup_zero_row_is_finite) = loss_tests(UNSUP)

(test_sup_matches_reference_none, test_sup_matches_reference_reduced, test_sup_dtypes,
 test_sup_gradcheck, test_sup_deterministic_two_pass_backward, test_sup_nan_propagates,
 test_sup_zero_row_is_finite) = loss_tests(SUP)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_modules_match_functional(backend):
    y = randn((12, 5), generator("simcse", "module"))
    torch.testing.assert_close(ck.SimCSEUnsupLoss(lamda=0.1, backend=backend)(y),
                               ck.simcse_unsup_loss(y, 0.1, backend="torch"))
    torch.testing.assert_close(ck.SimCSESupLoss(lamda=0.1, backend=backend)(y),
                               ck.simcse_sup_loss(y, 0.1, backend="torch"))
