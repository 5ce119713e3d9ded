import pytest
import torch

import contrastive_kernels as ck
from harness import KERNEL_BACKENDS, LossCase, compare, generator, loss_tests, randn


def _in_batch(n, d, dtype, gen):
    return [randn((n, d), gen, dtype), randn((n, d), gen, dtype)], {"temperature": 0.1}


def _bank(n, d, dtype, gen):
    # K ≠ N on purpose: the bank is a separate column set (MoCo queue).
    k = 2 * n + 5
    q, p, negs = (randn(s, gen, dtype) for s in ((n, d), (n, d), (k, d)))
    return [q, p, negs], {"temperature": 0.07}


IN_BATCH = LossCase(ck.info_nce, _in_batch, scalar_names=("temperature",))
BANK = LossCase(ck.info_nce, _bank, scalar_names=("temperature",))

globals().update(loss_tests(IN_BATCH))

globals().update(loss_tests(BANK, "bank"))


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_unnormalized(backend):
    case = LossCase(lambda *a, **k: ck.info_nce(*a, normalize=False, **k), _bank,
                    scalar_names=("temperature",))
    compare(case, backend, 9, 5, torch.float32, "none", generator("info_nce", "raw"))


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_module_matches_functional(backend):
    (q, p, negs), _ = _bank(6, 4, torch.float32, generator("info_nce", "module"))
    mod = ck.InfoNCELoss(temperature=0.2, reduction="sum", backend=backend)
    torch.testing.assert_close(mod(q, p, negs),
                               ck.info_nce(q, p, negs, 0.2, "sum", backend="torch"))
