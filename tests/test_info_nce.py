import pytest
import torch

import contrastive_kernels as ck
from harness import (DEVICE, KERNEL_BACKENDS, LossCase, estimator_temperature_terms,
                     compare, generator, loss_tests, randn)


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


# --- the debiased (tau_plus) and hard-negative (beta) estimators -------------------------
def _with_estimator(make, tau_plus, beta):
    def made(n, d, dtype, gen):
        args, kw = make(max(n, 2), d, dtype, gen)  # in-batch: one row has no negative
        return args, dict(kw, tau_plus=tau_plus, beta=beta)
    return made


for _tp, _beta, _name in ((0.1, 0.0, "debiased"), (0.1, 0.5, "hard")):
    _terms = estimator_temperature_terms(_beta)
    globals().update(loss_tests(LossCase(ck.info_nce, _with_estimator(_in_batch, _tp, _beta),
                                         scalar_names=("temperature",),
                                         temperature_terms=_terms), _name))
    globals().update(loss_tests(LossCase(ck.info_nce, _with_estimator(_bank, _tp, _beta),
                                         scalar_names=("temperature",),
                                         temperature_terms=_terms), f"bank_{_name}"))


def _released_estimator(pos_logits, neg_logits, tau_plus, beta, temperature):
    """The authors' estimator (joshr17/HCL ``criterion``) on given logits: per row."""
    pos, neg = torch.exp(pos_logits), torch.exp(neg_logits)
    n = neg.shape[1]
    imp = (beta * neg.log()).exp()
    reweight_neg = (imp * neg).sum(dim=-1) / imp.mean(dim=-1)
    ng = (-tau_plus * n * pos + reweight_neg) / (1 - tau_plus)
    ng = torch.clamp(ng, min=n * torch.e ** (-1 / temperature))
    return -torch.log(pos / (pos + ng))


@pytest.mark.parametrize("backend", ["torch"] + KERNEL_BACKENDS)
@pytest.mark.parametrize("bank", [False, True])
def test_estimator_negatives_are_the_other_keys_or_the_bank(backend, bank):
    """In-batch the negatives of row i are the other N − 1 keys; with a bank, its K rows
    (the in-batch keys are not candidates there), as info_nce's candidate sets are."""
    gen = generator("info_nce", "estimator", bank)
    q, k = (torch.randn(9, 5, generator=gen, dtype=torch.float64) for _ in range(2))
    negs = torch.randn(13, 5, generator=gen, dtype=torch.float64) if bank else None
    norm = torch.nn.functional.normalize
    qn, kn = norm(q, dim=1), norm(k, dim=1)
    pos = (qn * kn).sum(1) / 0.2
    if bank:
        neg_logits = qn @ norm(negs, dim=1).T / 0.2
    else:
        neg_logits = (qn @ kn.T / 0.2)[~torch.eye(9, dtype=torch.bool)].view(9, 8)
    want = _released_estimator(pos, neg_logits, 0.1, 0.5, 0.2)
    got = ck.info_nce(q.to(DEVICE), k.to(DEVICE), None if negs is None else negs.to(DEVICE),
                      0.2, reduction="none", tau_plus=0.1, beta=0.5, backend=backend)
    torch.testing.assert_close(got.cpu(), want, rtol=1e-12, atol=1e-12)
