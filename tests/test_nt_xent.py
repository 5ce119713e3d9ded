import pytest
import torch

import contrastive_kernels as ck
from harness import (DEVICE, KERNEL_BACKENDS, LossCase, estimator_temperature_terms,
                     generator, loss_tests, randn)


def _views(n, d, dtype, gen):
    return [randn((n, d), gen, dtype), randn((n, d), gen, dtype)], {"temperature": 0.5}


CASE = LossCase(ck.nt_xent_loss, _views, scalar_names=("temperature",))

globals().update(loss_tests(CASE))


def _decoupled_views(n, d, dtype, gen):
    """DCL with per-row positive weights (both views' rows, as DCLW's)."""
    (z1, z2), kw = _views(n, d, dtype, gen)
    weight = torch.rand((n,), generator=gen, dtype=torch.float64).to(z1.device) + 0.5
    return [z1, z2], dict(kw, decoupled=True, positive_weight=weight)


globals().update(loss_tests(LossCase(ck.nt_xent_loss, _decoupled_views,
                                     scalar_names=("temperature",)), "decoupled"))


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_decoupled_leaves_the_positive_out(backend):
    """DCL's rows equal NT-Xent's minus the positive's share: ℓ_dcl = ℓ + log(1 − p_pos)
    where p_pos is the positive's softmax probability (checked in fp64)."""
    (z1, z2), _ = _views(6, 4, torch.float64, generator("ntx", "dcl"))
    plain = ck.nt_xent_loss(z1, z2, 0.5, reduction="none", backend=backend)
    dcl = ck.nt_xent_loss(z1, z2, 0.5, reduction="none", decoupled=True, backend=backend)
    z = torch.nn.functional.normalize(torch.cat([z1, z2]), dim=1)
    s = z @ z.T / 0.5
    s.fill_diagonal_(float("-inf"))
    p_pos = torch.softmax(s, 1)[torch.arange(12), (torch.arange(12) + 6) % 12]
    torch.testing.assert_close(dcl, plain + torch.log1p(-p_pos), rtol=1e-10, atol=1e-12)


def test_positive_weight_is_checked():
    z = torch.randn(4, 3)
    with pytest.raises(ValueError, match="positive_weight"):
        ck.nt_xent_loss(z, z, positive_weight=torch.ones(5))
    with pytest.raises(TypeError, match="positive_weight"):
        ck.nt_xent_loss(z, z, positive_weight=torch.ones(4, dtype=torch.int64))


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_none_has_two_rows_per_pair(backend):
    z1, z2 = (randn((5, 3), generator("ntx", i)) for i in range(2))
    assert ck.nt_xent_loss(z1, z2, reduction="none", backend=backend).shape == (10,)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_module_matches_functional(backend):
    (z1, z2), _ = _views(7, 5, torch.float32, generator("ntx", "module"))
    mod = ck.NTXentLoss(temperature=0.3, backend=backend)
    torch.testing.assert_close(mod(z1, z2), ck.nt_xent_loss(z1, z2, 0.3, backend="torch"))


# --- the debiased (tau_plus) and hard-negative (beta) estimators -------------------------
def _estimator_views(tau_plus, beta, temperature=0.5):
    """Two views with at least two rows (one row has no negative: refused)."""
    def make(n, d, dtype, gen):
        (z1, z2), _ = _views(max(n, 2), d, dtype, gen)
        return [z1, z2], {"temperature": temperature, "tau_plus": tau_plus, "beta": beta}
    return make


ESTIMATORS = {"debiased": (0.1, 0.0), "hard": (0.0, 1.0), "both": (0.1, 0.5)}
for _name, (_tp, _beta) in ESTIMATORS.items():
    globals().update(loss_tests(LossCase(ck.nt_xent_loss, _estimator_views(_tp, _beta),
                                         scalar_names=("temperature",),
                                         temperature_terms=estimator_temperature_terms(_beta)),
                                _name))


def released_criterion(out_1, out_2, tau_plus, batch_size, beta, temperature):
    """joshr17/HCL main.py ``criterion`` (estimator "hard"; β = 0 is chingyaoc/DCL's
    debiased loss), transcribed statement by statement, on normalized outputs."""
    out = torch.cat([out_1, out_2], dim=0)
    neg = torch.exp(torch.mm(out, out.t().contiguous()) / temperature)
    mask = torch.ones((batch_size, 2 * batch_size), dtype=torch.bool)
    for i in range(batch_size):
        mask[i, i] = 0
        mask[i, i + batch_size] = 0
    mask = torch.cat((mask, mask), 0)
    neg = neg.masked_select(mask).view(2 * batch_size, -1)
    pos = torch.exp(torch.sum(out_1 * out_2, dim=-1) / temperature)
    pos = torch.cat([pos, pos], dim=0)
    N = batch_size * 2 - 2
    imp = (beta * neg.log()).exp()
    reweight_neg = (imp * neg).sum(dim=-1) / imp.mean(dim=-1)
    Ng = (-tau_plus * N * pos + reweight_neg) / (1 - tau_plus)
    Ng = torch.clamp(Ng, min=N * torch.e ** (-1 / temperature))
    return (-torch.log(pos / (pos + Ng))).mean()


@pytest.mark.parametrize("backend", ["torch"] + KERNEL_BACKENDS)
@pytest.mark.parametrize("tau_plus,beta", [(0.1, 0.0), (0.0, 1.0), (0.1, 0.5), (0.05, 3.0),
                                           (0.9, 2.0)])
@pytest.mark.parametrize("temperature", [0.5, 0.2])
def test_estimator_equals_the_released_code(backend, tau_plus, beta, temperature):
    """Loss and gradients against the authors' criterion in fp64 (to 1e-12)."""
    gen = generator("ntx", "released", tau_plus, beta, temperature)
    z1, z2 = (torch.randn(17, 6, generator=gen, dtype=torch.float64) for _ in range(2))
    leaves = [z.clone().requires_grad_() for z in (z1, z2)]
    norm = torch.nn.functional.normalize
    want = released_criterion(norm(leaves[0], dim=1), norm(leaves[1], dim=1), tau_plus, 17,
                              beta, temperature)
    want_grads = torch.autograd.grad(want, leaves)
    mine = [z.clone().to(DEVICE).requires_grad_() for z in (z1, z2)]
    got = ck.nt_xent_loss(*mine, temperature, tau_plus=tau_plus, beta=beta, backend=backend)
    got_grads = torch.autograd.grad(got, mine)
    torch.testing.assert_close(got.cpu(), want, rtol=1e-12, atol=1e-12)
    for a, b in zip(got_grads, want_grads):
        torch.testing.assert_close(a.cpu(), b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_the_clamp_binds_and_stops_the_negatives_gradient(backend):
    """τ⁺ = 0.9 with half the pairs aligned: their debiased negative term goes below the floor
    (2N − 2)·e^{−1/τ} for some rows, which then take the floor: their loss is
    log(1 + floor·e^{−s_p}) and no gradient reaches the negatives through them."""
    gen = generator("ntx", "clamp")
    z1 = torch.randn(8, 5, generator=gen, dtype=torch.float64)
    noise = torch.tensor([0.05] * 4 + [3.0] * 4, dtype=torch.float64)[:, None]
    z2 = z1 + noise * torch.randn(8, 5, generator=gen, dtype=torch.float64)
    rows = ck.nt_xent_loss(z1.to(DEVICE), z2.to(DEVICE), 0.5, reduction="none", tau_plus=0.9,
                           backend=backend).cpu()
    norm = torch.nn.functional.normalize
    s_p = (norm(z1, dim=1) * norm(z2, dim=1)).sum(1).repeat(2) / 0.5
    floor_rows = torch.log1p(14 * torch.exp(torch.tensor(-2.0, dtype=torch.float64) - s_p))
    clamped = torch.isclose(rows, floor_rows, rtol=1e-12, atol=0)
    assert clamped.any() and not clamped.all()
    want = released_criterion(norm(z1, dim=1), norm(z2, dim=1), 0.9, 8, 0.0, 0.5)
    torch.testing.assert_close(rows.mean(), want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_zero_estimator_is_plain_nt_xent(backend):
    (z1, z2), kw = _views(9, 4, torch.float32, generator("ntx", "zero-estimator"))
    torch.testing.assert_close(ck.nt_xent_loss(z1, z2, tau_plus=0.0, beta=0.0, backend=backend,
                                               **kw),
                               ck.nt_xent_loss(z1, z2, backend=backend, **kw), rtol=0, atol=0)


@pytest.mark.parametrize("kwargs,error", [
    (dict(tau_plus=1.0), ValueError), (dict(tau_plus=-0.1), ValueError),
    (dict(beta=-1.0), ValueError), (dict(beta=float("inf")), ValueError),
    (dict(tau_plus="0.1"), TypeError), (dict(tau_plus=0.1, decoupled=True), ValueError),
    (dict(beta=1.0, positive_weight=torch.ones(4)), ValueError)])
def test_estimator_arguments_are_checked(kwargs, error):
    z1, z2 = torch.randn(4, 3), torch.randn(4, 3)
    with pytest.raises(error, match="tau_plus|beta"):
        ck.nt_xent_loss(z1, z2, **kwargs)


def test_estimator_needs_a_negative():
    with pytest.raises(ValueError, match="at least one negative"):
        ck.nt_xent_loss(torch.randn(1, 3), torch.randn(1, 3), tau_plus=0.1)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_estimator_traces_in_one_graph(backend):
    """Engine operators plus O(N) torch: fullgraph=True, the eager values bitwise."""
    (z1, z2), kw = _views(7, 4, torch.float32, generator("ntx", "compile"))

    def step(a, b):
        return ck.nt_xent_loss(a, b, tau_plus=0.1, beta=0.5, backend=backend, **kw)

    results = []
    for fn in (step, torch.compile(step, backend="aot_eager", fullgraph=True)):
        torch._dynamo.reset()
        leaves = [z1.clone().requires_grad_(), z2.clone().requires_grad_()]
        out = fn(*leaves)
        out.backward()
        results.append((out.detach(), leaves[0].grad, leaves[1].grad))
    for got, want in zip(results[1], results[0]):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
