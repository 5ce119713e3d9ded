"""The benchmarks' peer adapters (benchmarks/peers.py) compute the problems they claim to:
where SAME says "same", the peer's loss and gradients equal the fp64 reference; where it
names a difference, that difference is real (so the benchmark table labels it truthfully)."""
import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import peers  # noqa: E402
from contrastive_kernels.problems import PARAMS, make_problem  # noqa: E402

CASES = [(p, loss) for p, losses in peers.SAME.items() for loss in losses if p != "inf-cl"]


@pytest.mark.parametrize("provider,loss", CASES, ids=[f"{p}-{l}" for p, l in CASES])
@pytest.mark.parametrize("n", [33, 130])
def test_peer_adapter_matches_its_label(provider, loss, n):
    if not peers.installed(provider):
        pytest.skip(f"{provider} is not installed (pip install -e '.[peers]')")
    run, leaves = make_problem(loss, n, 7, torch.float64, "cpu", seed=n)
    ref = run("torch")
    got = peers.peer_call(provider, loss, leaves, n, "cpu", seed=n)()
    if loss == "supcon_loss":  # PML SupConLoss omits SupContrast's T / base_T factor
        p = PARAMS[loss]
        got = got * (p["temperature"] / p["base_temperature"])
    if not peers.SAME[provider][loss].startswith("same") and loss != "supcon_loss":
        assert not torch.allclose(got, ref), "labelled as differing, but computes our loss"
        return
    g_ref = torch.autograd.grad(ref, leaves)
    g_got = torch.autograd.grad(got, leaves)
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)
    for a, b in zip(g_got, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_peer_providers_follow_the_table():
    cpu = torch.device("cpu")
    assert "inf-cl" not in peers.peer_providers("clip_loss", cpu)  # Triton on CUDA only
    for loss in ("simcse_unsup_loss", "simcse_sup_loss"):
        assert peers.peer_providers(loss, cpu) == []
