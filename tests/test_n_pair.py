import pytest
import torch

import contrastive_kernels as ck
from harness import KERNEL_BACKENDS, LossCase, generator, loss_tests, randn


def _pairs(n, d, dtype, gen):
    # Raw dot products (no normalization): keep logits moderate.
    a, p = (randn((n, d), gen, dtype) * 0.5 for _ in range(2))
    return [a, p], {"l2_reg": 0.02}


CASE = LossCase(ck.n_pair_loss, _pairs, scalar_names=("l2_reg",), normalizes=False)

globals().update(loss_tests(CASE))


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_module_matches_functional(backend):
    (a, p), _ = _pairs(6, 3, torch.float32, generator("npair", "module"))
    torch.testing.assert_close(ck.NPairLoss(l2_reg=0.1, backend=backend)(a, p),
                               ck.n_pair_loss(a, p, 0.1, backend="torch"))
