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
        "siglip_loss": lambda b: ck.siglip_loss(x, y, 10.0, -10.0, backend=b),
        "siglip_loss_none": lambda b: ck.siglip_loss(x, y, 10.0, -10.0, reduction="none",
                                                     backend=b).sum(),
        "triplet_margin_loss": lambda b: ck.triplet_margin_loss(x, labels, backend=b),
        "triplet_batch_all": lambda b: ck.triplet_margin_loss(x, labels, mining="batch_all",
                                                              backend=b),
        "triplet_semi_hard_none": lambda b: ck.triplet_margin_loss(
            x, labels, mining="semi_hard", reduction="none", backend=b).sum(),
        "contrastive_loss": lambda b: ck.contrastive_loss(x, labels, backend=b),
        "contrastive_loss_none": lambda b: ck.contrastive_loss(x, labels, reduction="none",
                                                               backend=b).sum(),
        # Every candidate set, a hard-negative column and a hardness offset.
        "multiple_negatives_ranking_loss": lambda b: ck.multiple_negatives_ranking_loss(
            x, y, bank, directions=("query_to_doc", "query_to_query", "doc_to_query",
                                    "doc_to_doc"), hardness_mode="all_negatives",
            hardness_strength=0.2, backend=b),
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


# A size where any N×M buffer would be gigabytes: 32,768 rows, so one fp32 logit (or
# distance) matrix is 32,768² × 4 B = 4 GiB. Run in a fresh process so its peak resident
# memory is this loss's alone; the kernels hold O((N+M)·D) and must stay far below one
# matrix.
# The triplet strategies that sort every anchor's distances run at 16,384 rows (a 1 GiB
# fp32 distance matrix; ~15 s each on 2 cores) instead of 32,768 (~60 s).
BIG_ROWS = {"triplet_batch_all": 16384, "triplet_semi_hard": 16384}
_BIG_SCRIPT = r"""
import resource, sys, torch
import contrastive_kernels as ck
from contrastive_kernels.testing import LargestTensor
torch.manual_seed(0)
rows, d = int(sys.argv[3]), 4
x = torch.randn(rows, d, requires_grad=True)
y = torch.randn(rows, d, requires_grad=True)
labels = torch.randint(0, 1000, (rows,))
losses = {
    "nt_xent_loss": lambda b: ck.nt_xent_loss(x[: rows // 2], y[: rows // 2], backend=b),
    "siglip_loss": lambda b: ck.siglip_loss(x, y, 10.0, -10.0, normalize=True, backend=b),
    "triplet_margin_loss": lambda b: ck.triplet_margin_loss(x, labels, backend=b),
    "contrastive_loss": lambda b: ck.contrastive_loss(x, labels, 3.0, backend=b),
    "triplet_batch_all": lambda b: ck.triplet_margin_loss(x, labels, mining="batch_all",
                                                          backend=b),
    "triplet_semi_hard": lambda b: ck.triplet_margin_loss(x, labels, mining="semi_hard",
                                                          backend=b),
}
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the peak-RSS counter (VmHWM) to the current RSS
rss_now = int([l for l in open("/proc/self/status") if l.startswith("VmRSS")][0].split()[1])
mode = LargestTensor()
with mode:
    loss = losses[sys.argv[2]](sys.argv[1])
    loss.backward()
peak = int([l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1])
print(mode.largest, (peak - rss_now) * 1024, float(loss))
"""


@pytest.mark.skipif(not __import__("sys").platform.startswith("linux"),
                    reason="peak RSS via /proc is Linux-only")
@pytest.mark.parametrize("backend", [b for b in KERNEL_BACKENDS if b == "cpu"])
@pytest.mark.parametrize("loss_name", ["nt_xent_loss", "siglip_loss", "triplet_margin_loss",
                                       "contrastive_loss", "triplet_batch_all",
                                       "triplet_semi_hard"])
def test_gigabyte_sized_problem_runs_in_linear_memory(backend, loss_name):
    import subprocess
    import sys

    rows = BIG_ROWS.get(loss_name, 32768)
    out = subprocess.run([sys.executable, "-c", _BIG_SCRIPT, backend, loss_name, str(rows)],
                         capture_output=True, text=True, timeout=600, check=True).stdout.split()
    largest, extra_bytes, loss = int(out[0]), int(out[1]), float(out[2])
    matrix_bytes = rows * rows * 4
    assert largest < rows * rows // 64, f"a tensor of {largest} elements was created"
    assert extra_bytes < matrix_bytes // 8, (
        f"peak resident memory grew by {extra_bytes / 2**20:.0f} MiB; one N×M fp32 matrix "
        f"is {matrix_bytes / 2**30:.0f} GiB")
    assert loss == loss and loss > 0
