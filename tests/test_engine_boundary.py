"""The engine boundary, on every kernel backend: empty dimensions handled alike (zero rows
give the empty-sum values, a zero feature width is refused naming the argument), and every
Triton launch on the inputs' own GPU.

The device-guard tests run without a GPU: ``torch.cuda.device`` is replaced by a recorder
and each Triton entry point is called with an argument on ``cuda:1``; the launcher behind
it must see that device made current. With two GPUs the last test runs for real.
"""
from __future__ import annotations

import types

import pytest
import torch

from contrastive_kernels.backends import triton as triton_backend
from contrastive_kernels.engines import library
from harness import DEVICE, KERNEL_BACKENDS

D = 4


def _keys(n):
    return torch.arange(n, device=DEVICE)


def _softmax(backend, n, m, extra=None, need_col=True):
    q = torch.randn(n, D, device=DEVICE)
    k = torch.randn(m, D, device=DEVICE)
    scale = torch.tensor(2.0, device=DEVICE)
    out = library.softmax_forward(q, k, scale, extra, _keys(n), _keys(m), False, need_col,
                                  True, False, False, backend)
    return q, k, scale, out


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_no_rows(backend):
    q, k, scale, (lse, pos, clse, _, rq, rk) = _softmax(backend, 0, 5)
    assert lse.shape == (0,) and pos.shape == (0,)
    assert torch.equal(clse, torch.full((5,), float("-inf"), device=DEVICE))
    g0, g5 = torch.zeros(0, device=DEVICE), torch.ones(5, device=DEVICE)
    dq, dk, dscale = library.softmax_backward(q, k, rq, rk, scale, _keys(0), _keys(5), lse,
                                              clse, g0, g0, g5, False, True, False, backend)
    assert dq.shape == (0, D) and not dk.any() and float(dscale) == 0.0
    params = torch.tensor([2.0, -1.0, 1.0], device=DEVICE)
    rows, _, _ = library.pair_forward(q, k, params, _keys(0), _keys(5), 0, False, True,
                                      False, False, backend)
    assert rows.shape == (0,)
    pos_idx, neg_idx = library.hardest_pairs(q, _keys(0), False, backend)
    assert pos_idx.shape == neg_idx.shape == (0,)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_no_columns(backend):
    q, k, scale, (lse, pos, clse, _, rq, rk) = _softmax(backend, 5, 0)
    assert torch.equal(lse, torch.full((5,), float("-inf"), device=DEVICE))
    assert not pos.any() and clse.shape == (0,)
    extra = torch.randn(5, device=DEVICE)
    _, _, _, (lse_x, _, _, _, _, _) = _softmax(backend, 5, 0, extra=extra, need_col=False)
    torch.testing.assert_close(lse_x, extra)  # the MoCo positive is the only candidate
    g = torch.ones(5, device=DEVICE)
    dq, dk, dscale = library.softmax_backward(q, k, rq, rk, scale, _keys(5), _keys(0),
                                              lse_x, torch.zeros(0, device=DEVICE), g, g,
                                              torch.zeros(0, device=DEVICE), False, True,
                                              False, backend)
    assert not dq.any() and dk.shape == (0, D) and float(dscale) == 0.0
    params = torch.tensor([2.0, -1.0, 1.0], device=DEVICE)
    for kind in (0, 1):
        rows, _, _ = library.pair_forward(q, k, params, _keys(5), _keys(0), kind, False,
                                          True, False, False, backend)
        assert torch.equal(rows, torch.zeros(5, device=DEVICE))
        total, pdq, pdk, dparams = library.pair_loss_and_grad(
            q, k, params, _keys(5), _keys(0), kind, False, True, False, False, 0.2, backend)
        assert float(total) == 0.0 and not pdq.any() and pdk.shape == (0, D)
        assert not dparams.any()


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_zero_width_is_refused_naming_the_argument(backend):
    x = torch.randn(5, 0, device=DEVICE)
    scale = torch.tensor(2.0, device=DEVICE)
    with pytest.raises(ValueError, match="q must be 2-D"):
        library.softmax_forward(x, x, scale, None, _keys(5), _keys(5), False, False, True,
                                True, False, backend)
    params = torch.tensor([2.0, -1.0, 1.0], device=DEVICE)
    with pytest.raises(ValueError, match="q must be 2-D"):
        library.pair_forward(x, x, params, _keys(5), _keys(5), 0, False, True, True, False,
                             backend)
    with pytest.raises(ValueError, match="x must be 2-D"):
        library.hardest_pairs(x, _keys(5), False, backend)
    with pytest.raises(ValueError, match="x must be 2-D"):
        library.distance_strip(x, torch.zeros(5, device=DEVICE), 0, 5, backend)


@pytest.mark.parametrize("backend", [b for b in KERNEL_BACKENDS if b in ("cpu", "cuda")])
def test_cpp_boundary_refuses_zero_width(backend):
    """The extension itself (called directly, past the operators) refuses D = 0 with a
    message naming the argument, instead of handing BLAS an invalid leading dimension."""
    impl = library.engine(backend)
    x = torch.randn(5, 0, device=DEVICE)
    with pytest.raises(RuntimeError, match="x must have at least one feature column"):
        impl._ext.inverse_norms(x, True)


# --------------------------------------------------------------------------------------
# Triton launches run on the inputs' device.
# --------------------------------------------------------------------------------------
class _RecordingGuard:
    """Stands in for torch.cuda.device: records which device is current inside it."""
    active: list = []

    def __init__(self, device):
        self.device = torch.device(device)

    def __enter__(self):
        _RecordingGuard.active.append(self.device)

    def __exit__(self, *exc):
        _RecordingGuard.active.pop()


def _entry_module(name):
    return {"inverse_norms": triton_backend.norms, "forward": triton_backend.softmax,
            "backward": triton_backend.softmax, "pair_forward": triton_backend.pairwise,
            "pair_backward": triton_backend.pairwise,
            "hardest_pairs": triton_backend.pairwise,
            "distance_strip": triton_backend.pairwise}[name]


@pytest.mark.parametrize("name", triton_backend.__all__)
def test_triton_entry_points_launch_under_the_inputs_device(name, monkeypatch):
    monkeypatch.setattr(torch.cuda, "device", _RecordingGuard)
    seen = []
    monkeypatch.setattr(_entry_module(name), name,
                        lambda *a, **k: seen.append(list(_RecordingGuard.active)) or "ran")
    on_gpu1 = types.SimpleNamespace(device=torch.device("cuda", 1))
    args = (0, on_gpu1) if name.startswith("pair_") else (on_gpu1,)
    assert getattr(triton_backend, name)(*args) == "ran"
    assert seen == [[torch.device("cuda", 1)]]
    on_cpu = types.SimpleNamespace(device=torch.device("cpu"))
    args = (0, on_cpu) if name.startswith("pair_") else (on_cpu,)
    getattr(triton_backend, name)(*args)
    assert seen[-1] == []  # CPU tensors (the interpreter) need no guard


def test_the_operators_reach_the_guarded_entry_points():
    """Every custom operator (and the distributed ring) calls the backend module's
    attributes, which are the guarded functions."""
    impl = library.engine("triton")
    assert impl is triton_backend
    for name in triton_backend.__all__:
        entry = getattr(impl, name)
        assert entry.__wrapped__ is getattr(_entry_module(name), name)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_a_second_gpu_runs_with_the_first_selected():
    import contrastive_kernels as ck
    torch.cuda.set_device(0)
    x = torch.randn(70, 16, device="cuda:1", requires_grad=True)
    y = torch.randn(70, 16, device="cuda:1")
    out = ck.info_nce(x, y, backend="triton")
    out.backward()
    ref_x = x.detach().cpu().double().requires_grad_()
    ref = ck.info_nce(ref_x, y.cpu().double(), backend="torch")
    ref.backward()
    assert out.device == torch.device("cuda", 1)
    torch.testing.assert_close(out.double().cpu(), ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(x.grad.double().cpu(), ref_x.grad, rtol=1e-4, atol=1e-5)
