"""The memory claim, tested: no kernel path ever creates an N×M tensor.

Every tensor produced by a PyTorch operator during forward and backward (including the
launchers' buffer allocations: empty, zeros, full) is recorded by a TorchDispatchMode;
the largest must stay below N·M/4, which an O((N+M)·D + P·M) engine meets at D = 8 while
any materialized similarity matrix (N·M elements) fails. A positive control proves the
detector sees the reference's N×M logits.
"""
import pytest
import torch

import contrastive_kernels as ck
from contrastive_kernels.testing import LargestTensor
from harness import DEVICE, KERNEL_BACKENDS, generator, randn

D = 8
# Rows per backend: large enough that one tile of logits is well below N·M/4 (the C++ CPU
# engine's per-thread tile is 64×256), small enough for the Triton interpreter.
ROWS = {"torch": 256, "triton": 256, "cpu": 2048, "cuda": 4096}


def _losses(gen, N):
    x, y, bank = (randn((N, D), gen).requires_grad_() for _ in range(3))
    labels = torch.randint(0, 16, (N,), generator=gen).to(DEVICE)
    return {
        "info_nce": lambda b: ck.info_nce(x, y, backend=b),
        "info_nce_bank": lambda b: ck.info_nce(x, y, bank, backend=b),
        "nt_xent_loss": lambda b: ck.nt_xent_loss(x[: N // 2], y[: N // 2], backend=b),
        "clip_loss": lambda b: ck.clip_loss(x, y, 10.0, backend=b),
        "simcse_unsup_loss": lambda b: ck.simcse_unsup_loss(x, backend=b),
        "simcse_sup_loss": lambda b: ck.simcse_sup_loss(torch.cat([x, y, bank])[: 3 * (N // 2)],
                                                        backend=b),
        "supcon_loss": lambda b: ck.supcon_loss(x, labels, backend=b),
        "n_pair_loss": lambda b: ck.n_pair_loss(x, y, backend=b),
    }


NAMES = list(_losses(generator("names"), 8))


def _largest(loss_name, backend):
    fns = _losses(generator("memory", loss_name), ROWS[backend])
    mode = LargestTensor()
    with mode:
        fns[loss_name](backend).backward()
    return mode


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("loss_name", NAMES)
def test_no_nxm_tensor_in_forward_or_backward(loss_name, backend):
    mode = _largest(loss_name, backend)
    n = ROWS[backend]
    assert mode.largest < n * n // 4, (f"{loss_name} on {backend} created a tensor of "
                                      f"{mode.largest} elements ({mode.op}); N·M = {n * n}")


@pytest.mark.parametrize("loss_name", NAMES)
def test_detector_sees_the_reference_matrix(loss_name):
    n = ROWS["torch"]
    assert _largest(loss_name, "torch").largest >= n * n // 4
