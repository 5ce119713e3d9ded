"""The softmax-family engine, shared by every softmax loss.

Each loss in losses/<loss>.py only chooses the candidate rows, the keys that mark positives,
the diagonal mask and the scale, then assembles its per-row loss from the engine's O(N)
outputs. The kernel backend (Triton, C++ CPU or CUDA) is a module exposing
``inverse_norms``, ``forward`` and ``backward`` with the signatures of
``backends/triton/softmax.py``; it runs inside the custom operator
``contrastive_kernels::softmax_forward`` (engines/library.py), whose autograd formula calls
``softmax_backward``:

    lse_i = log([e^{extra_i}] + Σ_{j∈C(i)} e^{S_ij}),  pos_i = Σ_{j∈C(i), rkey_i=ckey_j} S_ij,
    clse_j = log Σ_{i∈C(j)} e^{S_ij},  S_ij = scale·⟨q̂_i, k̂_j⟩,

and, in the same pass (``softmax_engine_negatives``), up to MAX_EXTRA_LSE more per-row
log-sum-exps over the row's negatives (candidates whose key differs from the row's) at
constant multiples μ_t of the logits, with their gradients:

    xlse_ti = log Σ_{j∈C(i), rkey_i≠ckey_j} e^{μ_t·S_ij}.
"""
from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType

import torch

from .library import MAX_EXTRA_LSE, backend_name, softmax_forward

__all__ = ["EngineOptions", "MAX_EXTRA_LSE", "softmax_engine", "softmax_engine_negatives",
           "boost_features", "candidate_lse", "merge_lse", "widen_half"]


@dataclass(frozen=True)
class EngineOptions:
    mask_diag: bool = False   # exclude j == i from every row's (and column's) candidates
    need_col: bool = False    # also return the column log-sum-exp (symmetric CLIP)
    normalize: bool = True    # fused L2 normalization (F.normalize rule, eps 1e-12)


def softmax_engine(q, k, scale, *, impl: ModuleType, row_key, col_key, extra=None,
                   opts: EngineOptions = EngineOptions()):
    """Run the engine.

    q (N, D) and k (M, D) share dtype and device (pass the same tensor for self-similarity);
    scale: 0-dim tensor (its gradient is returned); row_key (N,), col_key (M,) int64;
    extra (N,) optional logit joined to each row's candidates.
    Returns lse (N,), pos (N,), clse (M,) (empty unless opts.need_col), float32 (float64
    for float64 inputs).
    """
    lse, pos, clse, _ = _run(q, k, scale, impl, row_key, col_key, extra, opts, None)
    return lse, pos, clse


def softmax_engine_negatives(q, k, scale, multipliers, *, impl, row_key, col_key,
                             extra=None, opts: EngineOptions = EngineOptions()):
    """softmax_engine's pass that also returns xlse (T, N): for each of the T ≤
    MAX_EXTRA_LSE constant multipliers μ_t (floats, no gradient),
    xlse_ti = log Σ e^{μ_t·S_ij} over row i's negatives (its candidates j with
    col_key_j ≠ row_key_i; −inf where there are none), differentiable in q, k and scale.
    Returns lse (N,), pos (N,), clse (M,) or (0,), xlse (T, N)."""
    if not 1 <= len(multipliers) <= MAX_EXTRA_LSE:
        raise ValueError(f"multipliers: 1 to {MAX_EXTRA_LSE} per pass, got "
                         f"{len(multipliers)}")
    return _run(q, k, scale, impl, row_key, col_key, extra, opts,
                [float(mu) for mu in multipliers])


def _run(q, k, scale, impl, row_key, col_key, extra, opts, xmul):
    """One engine call through the custom operator: (lse, pos, clse, xlse)."""
    shared = k is q
    q = q.contiguous()
    k = q if shared else k.contiguous()
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    scale = scale.to(acc)
    if extra is not None:
        extra = extra.to(acc).contiguous()
    deterministic = torch.are_deterministic_algorithms_enabled()
    lse, pos, clse, xlse, _, _ = softmax_forward(q, k, scale, extra, row_key.contiguous(),
                                                 col_key.contiguous(), opts.mask_diag,
                                                 opts.need_col, opts.normalize, shared,
                                                 deterministic, backend_name(impl), xmul)
    return lse, pos, clse, xlse


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; the backward multiplies the gradient by a constant."""

    @staticmethod
    def forward(ctx, x, factor):
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.factor, None


def boost_features(x: torch.Tensor, factor: float) -> torch.Tensor:
    """x (R, D) unchanged, its gradient scaled by ``factor``. An engine call at scale
    ``s + α`` on boosted features (factor ``s / (s + α)``) differentiates as logits
    ``s·cos + α·stop_grad(cos)``: a logit offset that carries no gradient."""
    return _ScaleGrad.apply(x, factor)


def candidate_lse(rows, keys, scale, *, impl, normalize=True, exclude_own=False, boost=0.0):
    """(N,) log-sum-exp over one candidate set: rows (N, D) against keys (K, D) at
    ``scale + boost`` (0-dim tensor scale), the boost carrying no gradient
    (``boost_features``); ``exclude_own`` drops column i from row i (the row's own key
    block must come first in keys). No positives: merge the sets with ``merge_lse`` and
    subtract the target logit, computed per row in O(N·D)."""
    if boost:
        factor = float(scale.detach()) / (float(scale.detach()) + boost)
        rows, keys = boost_features(rows, factor), boost_features(keys, factor)
        scale = scale + boost
    no_target = torch.full((rows.shape[0],), -1, dtype=torch.int64, device=rows.device)
    cols = torch.arange(keys.shape[0], dtype=torch.int64, device=rows.device)
    lse, _, _ = softmax_engine(rows, keys, scale, impl=impl, row_key=no_target,
                               col_key=cols, opts=EngineOptions(mask_diag=exclude_own,
                                                                normalize=normalize))
    return lse


def merge_lse(parts):
    """One softmax over the union of candidate sets: the log-sum-exp of their (N,)
    log-sum-exps (-inf parts, empty sets, drop out)."""
    return parts[0] if len(parts) == 1 else torch.logsumexp(torch.stack(parts), dim=0)


def widen_half(*xs):
    """Half-precision features as float32 (autograd casts their gradients back once).
    A loss that merges several engine calls over the same tensor uses it: each call
    returns its gradient in the input dtype, so half partials would each be rounded
    before autograd sums them, and where they cancel the sum loses its digits."""
    return tuple(x.float() if x.dtype in (torch.float16, torch.bfloat16) else x for x in xs)
