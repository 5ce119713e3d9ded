"""The lightly drop-ins against the installed lightly 1.6: loss and gradients on every
kernel backend, the memory bank's contents and pointer step by step, lightly's own
argument errors, no N×M tensor."""
import pytest
import torch

lightly_loss = pytest.importorskip("lightly.loss")

from contrastive_kernels.integrations import lightly as ours  # noqa: E402
from contrastive_kernels.testing import LargestTensor, assert_close  # noqa: E402
from harness import KERNEL_BACKENDS, generator  # noqa: E402


def _views(n, d, dtype, gen):
    return [torch.randn(n, d, generator=gen, dtype=torch.float64).to(dtype).requires_grad_()
            for _ in range(2)]


def _check(mine, theirs, n, d, dtype, key):
    """Loss and both views' gradients of ours (dtype) against lightly's (fp64 copies)."""
    views = _views(n, d, dtype, generator("lightly", key, dtype))
    ref_views = [v.detach().double().requires_grad_() for v in views]
    got = mine(*views)
    want = theirs(*ref_views)
    assert_close(got, want, dtype, f"{key} loss")
    grads, ref_grads = torch.autograd.grad(got, views), torch.autograd.grad(want, ref_views)
    # One pair (n = 1): the only candidate is the positive, the exact gradient is 0 and
    # both sides hold rounding noise, so the error is measured against 1.
    floor = 1.0 if n == 1 else 1e-30
    for g, w, name in zip(grads, ref_grads, ("out0", "out1")):
        assert g.dtype == dtype
        assert_close(g, w, dtype, f"{key} grad of {name}", floor=floor)


LOSSES = {
    "ntxent": lambda b: (ours.NTXentLoss(temperature=0.3, backend=b),
                         lightly_loss.NTXentLoss(temperature=0.3)),
    "ntxent_default": lambda b: (ours.NTXentLoss(backend=b), lightly_loss.NTXentLoss()),
    "dcl": lambda b: (ours.DCLLoss(temperature=0.2, backend=b),
                      lightly_loss.DCLLoss(temperature=0.2)),
    "dcl_weight_fn": lambda b: (
        ours.DCLLoss(weight_fn=lambda a, c: 1.0 + (a * c).sum(1).detach(), backend=b),
        lightly_loss.DCLLoss(weight_fn=lambda a, c: 1.0 + (a * c).sum(1).detach())),
    "dclw": lambda b: (ours.DCLWLoss(temperature=0.2, sigma=0.7, backend=b),
                       lightly_loss.DCLWLoss(temperature=0.2, sigma=0.7)),
}


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_matches_lightly(name, backend, dtype):
    for n, d in ((1, 3), (9, 5), (33, 17)):
        mine, theirs = LOSSES[name](backend)
        if n == 1 and name != "ntxent" and name != "ntxent_default":
            continue  # one pair: DCL has no negative left (both give -inf)
        _check(mine, theirs, n, d, dtype, (name, n, d))


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_memory_bank_steps_match_lightly(backend):
    """NTXentLoss(memory_bank_size=(K, D)) over four steps from the same bank, K = 10 and
    N = 4 so the queue wraps (lightly drops the rows past the end): every step's loss and
    gradients, and the bank and pointer after it, equal lightly's; a view that needs no
    gradient leaves the bank as it was."""
    k, d, n = 10, 6, 4
    mine = ours.NTXentLoss(temperature=0.2, memory_bank_size=(k, d), backend=backend)
    theirs = lightly_loss.NTXentLoss(temperature=0.2, memory_bank_size=(k, d))
    mine.memory_bank.bank.copy_(theirs.memory_bank.bank)
    for step in range(4):
        gen = generator("lightly", "bank", step)
        views = _views(n, d, torch.float32, gen)
        ref = [v.detach().clone().requires_grad_() for v in views]
        got, want = mine(*views), theirs(*ref)
        assert_close(got, want, torch.float32, f"step {step} loss")
        for a, b in zip(torch.autograd.grad(got, views), torch.autograd.grad(want, ref)):
            assert_close(a, b, torch.float32, f"step {step} grad")
        torch.testing.assert_close(mine.memory_bank.bank, theirs.memory_bank.bank)
        assert int(mine.memory_bank.bank_ptr) == int(theirs.memory_bank.bank_ptr)
    frozen = mine.memory_bank.bank.clone()
    mine(*(v.detach() for v in _views(n, d, torch.float32, generator("lightly", "eval"))))
    assert torch.equal(mine.memory_bank.bank, frozen)


def test_a_seeded_bank_is_used():
    """Code that writes the queue (memory_bank.bank) changes the loss as in lightly."""
    mine = ours.NTXentLoss(memory_bank_size=(8, 3), backend="cpu")
    theirs = lightly_loss.NTXentLoss(memory_bank_size=(8, 3))
    seeded = torch.nn.functional.normalize(torch.randn(8, 3, generator=generator("seed")), dim=1)
    mine.memory_bank.bank = seeded.clone()
    theirs.memory_bank.bank = seeded.clone()
    views = _views(5, 3, torch.float32, generator("lightly", "seeded"))
    with torch.no_grad():
        torch.testing.assert_close(mine(*views), theirs(*views))


@pytest.mark.parametrize("kwargs,cls", [
    (dict(temperature=0.0), "NTXentLoss"), (dict(memory_bank_size=5), "NTXentLoss"),
    (dict(memory_bank_size=(-1, 3)), "NTXentLoss"), (dict(memory_bank_size=(4, 3, 2)), "NTXentLoss")])
def test_bad_arguments_raise_lightly_errors(kwargs, cls):
    with pytest.raises(Exception) as theirs:
        getattr(lightly_loss, cls)(**kwargs)
    with pytest.raises(type(theirs.value)) as mine:
        getattr(ours, cls)(**kwargs)
    assert str(mine.value) == str(theirs.value)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("name", ["ntxent", "dclw", "bank"])
def test_no_nxm_tensor_on_the_integration_path(backend, name):
    """No tensor of N·M/4 elements (M = 2N candidates, or the K-row bank), while
    lightly's own builds one. N as in test_memory.py."""
    n = {"triton": 256, "cpu": 2048, "cuda": 4096}[backend]
    views = _views(n, 8, torch.float32, generator("lightly", "memory"))
    if name == "bank":
        pair = (ours.NTXentLoss(memory_bank_size=(2 * n, 8), backend=backend),
                lightly_loss.NTXentLoss(memory_bank_size=(2 * n, 8)))
        m = 2 * n
    else:
        pair = LOSSES[name](backend)
        m = 2 * n
    for loss, should_fit in zip(pair, (True, False)):
        mode = LargestTensor()
        with mode:
            loss(*views).backward()
        assert (mode.largest < n * m // 4) == should_fit, (name, mode.largest, mode.op)
