"""The debiased (Chuang et al. 2020) and hard-negative (Robinson et al. 2021) estimators of
the negative term, as the authors' released code computes them, from per-row
log-sum-exps over the negatives (the engine's O(N) outputs).

The released code (``criterion`` in github.com/joshr17/HCL, which contains
github.com/chingyaoc/DCL's debiased loss as β = 0) computes, per anchor row with positive
logit s_p and n negatives of logits s_j:

    imp_j = e^{β s_j},   reweight = Σ_j imp_j e^{s_j} / mean_j imp_j
    Ng = max( (reweight − τ⁺·n·e^{s_p}) / (1 − τ⁺),  n·e^{−1/τ} )
    ℓ = −log( e^{s_p} / (e^{s_p} + Ng) )

so reweight = n·exp(LSE_j((1+β)s_j) − LSE_j(β s_j)): two log-sum-exps over the negatives
at two scales, both from the one engine pass that also yields s_p (the engine's extra
log-sum-exps over the negatives, engines/softmax.py softmax_engine_negatives).
Everything below is in the log domain (e^{s} overflows fp32 at small τ).
The clamp's floor uses the scale s = 1/τ, i.e. cosine −1, as the authors' e^{−1/τ} does.
τ⁺ = β = 0 is not routed here: it is plain NT-Xent / InfoNCE without the clamp.
"""
from __future__ import annotations

import math

import torch


def active(tau_plus: float, beta: float) -> bool:
    """Whether the estimator differs from the plain loss."""
    return tau_plus != 0 or beta != 0


def multipliers(beta: float) -> list[float]:
    """The logit multiples whose log-sum-exps over the negatives the estimator needs, for
    one engine pass (softmax_engine_negatives): 1 + β, and β when β > 0 (with β = 0 the
    second sum is the count of negatives)."""
    return [1.0 + beta, beta] if beta else [1.0]


def estimator_rows(positive, negative_lse, n_neg: int, scale, tau_plus: float,
                   beta: float):
    """positive (R,) = s·cos(anchor, positive); negative_lse (T, R) the engine's
    log Σ_neg e^{μ·s·cos} over each row's negatives at the μ of ``multipliers(beta)``;
    n_neg negatives per row (≥ 1), scale s 0-dim, 0 ≤ tau_plus < 1, beta ≥ 0.
    Returns ℓ (R,)."""
    log_n = math.log(n_neg)
    log_reweight = negative_lse[0]
    if beta:
        log_reweight = log_reweight + (log_n - negative_lse[1])
    log_floor = log_n - scale
    if tau_plus:
        # log((e^a − e^b)/(1 − τ⁺)) with a = log reweight, b = log(τ⁺ n) + s_p, where a > b.
        gap = math.log(tau_plus * n_neg) + positive - log_reweight
        positive_part = ~(gap >= 0)  # NaN stays on this side, so it propagates
        safe_gap = torch.where(positive_part, gap, torch.full_like(gap, -1.0))
        log_raw = log_reweight + torch.log1p(-torch.exp(safe_gap)) - math.log1p(-tau_plus)
        keep = positive_part & ~(log_raw < log_floor)
    else:
        log_raw = log_reweight
        keep = ~(log_raw < log_floor)
    log_ng = torch.where(keep, log_raw, log_floor.expand_as(log_raw))
    return torch.logaddexp(positive, log_ng) - positive
