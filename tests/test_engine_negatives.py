"""The engine's extra log-sum-exps over each row's negatives (engines/softmax.py
``softmax_engine_negatives``), on every kernel backend, through the custom operator:

    xlse_ti = log Σ_{j valid, row_key_i ≠ col_key_j} e^{μ_t·S_ij},   t < MAX_EXTRA_LSE,

against a dense float64 reference (values, and gradients of a random combination of every
output), at odd shapes that take several tiles, shared and separate keys, rows without
negatives, multipliers 0 and > 1; and the losses that use it (the debiased / hard-negative
estimator) in one engine pass.
"""
from __future__ import annotations

import pytest
import torch

import contrastive_kernels as ck
from contrastive_kernels.engines import library
from contrastive_kernels.engines.softmax import (MAX_EXTRA_LSE, EngineOptions,
                                                 softmax_engine_negatives)
from contrastive_kernels.testing import assert_close, scalar_grad_floor
from harness import DEVICE, KERNEL_BACKENDS, generator

DTYPES = (torch.float64, torch.float32, torch.bfloat16, torch.float16)


def reference(q, k, scale, row_key, col_key, multipliers, mask_diag, normalize):
    """Dense float64 (lse, pos, xlse) of the engine's contract."""
    norm = torch.nn.functional.normalize
    qn, kn = (norm(q, dim=1), norm(k, dim=1)) if normalize else (q, k)
    s = scale * qn @ kn.T
    valid = torch.ones_like(s, dtype=torch.bool)
    if mask_diag:
        valid &= ~torch.eye(*s.shape, dtype=torch.bool)
    match = row_key[:, None] == col_key[None, :]
    lse = torch.where(valid, s, -torch.inf).logsumexp(1)
    pos = torch.where(valid & match, s, 0.0).sum(1)
    xlse = torch.stack([torch.where(valid & ~match, mu * s, -torch.inf).logsumexp(1)
                        for mu in multipliers])
    return lse, pos, xlse


def _problem(n, m, d, shared, gen):
    """q (n, d), k (m, d) or q itself; keys with several positives per row, and three rows
    (key −5) with none."""
    q = torch.randn(n, d, generator=gen, dtype=torch.float64)
    k = q if shared else torch.randn(m, d, generator=gen, dtype=torch.float64)
    row_key = torch.randint(0, 6, (n,), generator=gen)
    row_key[:3] = -5
    col_key = row_key if shared else torch.randint(0, 6, (m,), generator=gen)
    return q, k, row_key, col_key


def _weighted_total(lse, pos, xlse, gens):
    g_lse, g_pos, g_x = gens
    total = (g_lse.to(lse.dtype) * lse).sum() + (g_pos.to(lse.dtype) * pos).sum()
    return total + (g_x.to(lse.dtype) * torch.where(torch.isinf(xlse), 0.0, xlse)).sum()


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("multipliers", [(1.5,), (1.5, 0.5), (0.0, 2.0)])
@pytest.mark.parametrize("shared,mask_diag,normalize", [(False, False, True),
                                                        (True, True, True),
                                                        (False, False, False)])
def test_values_and_gradients_match_the_dense_reference(backend, dtype, multipliers, shared,
                                                        mask_diag, normalize):
    gen = generator("negatives", backend, dtype, multipliers, shared, mask_diag, normalize)
    q, k, row_key, col_key = _problem(37, 53, 19, shared, gen)
    scale = torch.tensor(2.5, dtype=torch.float64)
    leaves = [q.clone().requires_grad_(), scale.clone().requires_grad_()]
    k_ref = leaves[0] if shared else k.clone().requires_grad_()
    if not shared:
        leaves.append(k_ref)
    want = reference(leaves[0], k_ref, leaves[1], row_key, col_key, multipliers, mask_diag,
                     normalize)
    gens = tuple(torch.randn(shape, generator=gen, dtype=torch.float64)
                 for shape in ((37,), (37,), (len(multipliers), 37)))
    want_grads = torch.autograd.grad(_weighted_total(*want, gens), leaves)

    acc = torch.float64 if dtype == torch.float64 else torch.float32
    mine = [q.to(DEVICE, dtype).requires_grad_(), scale.to(DEVICE, acc).requires_grad_()]
    k_mine = mine[0] if shared else k.to(DEVICE, dtype).requires_grad_()
    if not shared:
        mine.append(k_mine)
    lse, pos, clse, xlse = softmax_engine_negatives(
        mine[0], k_mine, mine[1], multipliers, impl=library.engine(backend),
        row_key=row_key.to(DEVICE), col_key=col_key.to(DEVICE),
        opts=EngineOptions(mask_diag=mask_diag, normalize=normalize))
    assert xlse.shape == (len(multipliers), 37) and clse.shape == (0,)
    assert torch.isneginf(xlse.cpu()).equal(torch.isneginf(want[2]))
    for got, ref, what in zip((lse, pos, xlse), want, ("lse", "pos", "xlse")):
        assert_close(got, ref, dtype, what, DEVICE)
    got_grads = torch.autograd.grad(_weighted_total(lse, pos, xlse, gens), mine)
    assert_close(got_grads[0], want_grads[0], dtype, "dq", DEVICE)
    floor = scalar_grad_floor(gens[2], want[2].nan_to_num(neginf=0.0)) + \
        scalar_grad_floor(gens[0], want[0])
    assert_close(got_grads[1], want_grads[1], dtype, "dscale", DEVICE, floor=floor)
    if not shared:
        assert_close(got_grads[2], want_grads[2], dtype, "dk", DEVICE)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_gradcheck_in_float64(backend):
    gen = generator("negatives", "gradcheck", backend)
    q, k, row_key, col_key = _problem(9, 11, 5, False, gen)
    q, k = q.to(DEVICE).requires_grad_(), k.to(DEVICE).requires_grad_()
    scale = torch.tensor(1.7, dtype=torch.float64, device=DEVICE, requires_grad=True)
    impl = library.engine(backend)

    def fn(q_, k_, s_):
        _, _, _, xlse = softmax_engine_negatives(q_, k_, s_, (1.3, 0.4), impl=impl,
                                                 row_key=row_key.to(DEVICE),
                                                 col_key=col_key.to(DEVICE))
        return torch.where(torch.isinf(xlse), 0.0, xlse)

    # Full Jacobians under the Triton interpreter take minutes (218 engine calls): there,
    # as in harness.gradcheck, the fast mode checks random projections of it instead.
    fast = backend == "triton" and DEVICE.type == "cpu"
    assert torch.autograd.gradcheck(fn, (q, k, scale), atol=1e-8, rtol=1e-6, fast_mode=fast)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_a_nan_reaches_only_the_rows_that_see_it_as_a_negative(backend):
    gen = generator("negatives", "nan", backend)
    q, k = torch.randn(6, 4, generator=gen), torch.randn(8, 4, generator=gen)
    k[5, 2] = float("nan")
    row_key = torch.tensor([5, 0, 1, 2, 3, 4])
    col_key = torch.arange(8)  # row 0's positive is the NaN key: its negatives are finite
    _, _, _, xlse = softmax_engine_negatives(
        q.to(DEVICE), k.to(DEVICE), torch.tensor(2.0, device=DEVICE), (1.0, 0.5),
        impl=library.engine(backend), row_key=row_key.to(DEVICE), col_key=col_key.to(DEVICE))
    xlse = xlse.cpu()
    assert torch.isfinite(xlse[:, 0]).all() and torch.isnan(xlse[:, 1:]).all()


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_empty_sides(backend):
    impl = library.engine(backend)
    scale = torch.tensor(2.0, device=DEVICE)
    keys = torch.arange(5, device=DEVICE)
    _, _, _, xlse = softmax_engine_negatives(torch.randn(5, 3, device=DEVICE),
                                             torch.randn(0, 3, device=DEVICE), scale, (1.0,),
                                             impl=impl, row_key=keys, col_key=keys[:0])
    assert torch.equal(xlse, torch.full((1, 5), float("-inf"), device=DEVICE))
    _, _, _, xlse = softmax_engine_negatives(torch.randn(0, 3, device=DEVICE),
                                             torch.randn(5, 3, device=DEVICE), scale,
                                             (1.0, 2.0), impl=impl, row_key=keys[:0],
                                             col_key=keys)
    assert xlse.shape == (2, 0)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_rows_without_negatives_give_minus_infinity_and_no_gradient(backend):
    """Every key equal: no row has a negative. xlse is −inf, and a finite upstream gradient
    on it reaches nothing (the positives' e^{μS − xlse} = +inf must stay out)."""
    q = torch.randn(5, 3, device=DEVICE, requires_grad=True)
    k = torch.randn(7, 3, device=DEVICE, requires_grad=True)
    keys = torch.zeros(7, dtype=torch.int64, device=DEVICE)
    _, _, _, xlse = softmax_engine_negatives(q, k, torch.tensor(2.0, device=DEVICE),
                                             (1.0, 3.0), impl=library.engine(backend),
                                             row_key=keys[:5], col_key=keys)
    assert torch.equal(xlse.detach(), torch.full((2, 5), float("-inf"), device=DEVICE))
    dq, dk = torch.autograd.grad(xlse, (q, k), torch.ones_like(xlse))
    assert torch.equal(dq, torch.zeros_like(dq)) and torch.equal(dk, torch.zeros_like(dk))


@pytest.mark.parametrize("multipliers", [(), (1.0,) * (MAX_EXTRA_LSE + 1)])
def test_the_number_of_multipliers_is_checked(multipliers):
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match="multipliers"):
        softmax_engine_negatives(x, x, torch.tensor(1.0), multipliers,
                                 impl=library.engine(KERNEL_BACKENDS[0]),
                                 row_key=torch.arange(4), col_key=torch.arange(4))


def test_a_pass_computes_extra_row_sums_or_column_sums_not_both():
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match="need_col"):
        softmax_engine_negatives(x, x, torch.tensor(1.0), (1.0,),
                                 impl=library.engine(KERNEL_BACKENDS[0]),
                                 row_key=torch.arange(4), col_key=torch.arange(4),
                                 opts=EngineOptions(need_col=True))


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("loss", ["nt_xent", "info_nce", "info_nce_bank"])
@pytest.mark.parametrize("tau_plus,beta", [(0.1, 0.0), (0.1, 0.5), (0.0, 2.0)])
def test_the_estimator_is_one_engine_pass(backend, loss, tau_plus, beta, monkeypatch):
    """Both log-sum-exps of the estimator (at (1+β)·s and β·s) and the positive logit come
    from one forward pass of the engine and one backward pass."""
    gen = generator("negatives", "one-pass", backend, loss)
    x, y, bank = (torch.randn(n, 8, generator=gen, device="cpu").to(DEVICE).requires_grad_()
                  for n in (12, 12, 20))
    calls = {"forward": 0, "backward": 0}
    for name in calls:
        real = getattr(library.engine(backend), name)

        def counted(*args, _real=real, _name=name, **kwargs):
            calls[_name] += 1
            return _real(*args, **kwargs)
        monkeypatch.setattr(library.engine(backend), name, counted)
    kw = dict(tau_plus=tau_plus, beta=beta, backend=backend)
    if loss == "nt_xent":
        out = ck.nt_xent_loss(x, y, **kw)
    else:
        out = ck.info_nce(x, y, bank if loss == "info_nce_bank" else None, **kw)
    out.backward()
    assert calls == {"forward": 1, "backward": 1}
