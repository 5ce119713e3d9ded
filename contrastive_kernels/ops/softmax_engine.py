"""The softmax-family engine as one autograd Function, shared by every softmax loss.

Each loss in ops/<loss>.py only chooses the candidate rows, the keys that mark positives,
the diagonal mask and the scale, then assembles its per-row loss from the engine's O(N)
outputs. The kernel backend (Triton now; C++ CPU/CUDA plug in the same interface) is a
module exposing ``inverse_norms``, ``forward`` and ``backward`` with the signatures of
``ops/triton_engine.py``.
"""
from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType

import torch


@dataclass(frozen=True)
class EngineOptions:
    mask_diag: bool = False   # exclude j == i from every row's (and column's) candidates
    need_col: bool = False    # also return the column log-sum-exp (symmetric CLIP)
    normalize: bool = True    # fused L2 normalization (F.normalize rule, eps 1e-12)


class SoftmaxEngineFunction(torch.autograd.Function):
    """(q, k, scale, extra) -> (lse (N,), pos (N,), clse (M,) or empty).

    lse_i = log([e^{extra_i}] + Σ_{j∈C(i)} e^{S_ij}),  pos_i = Σ_{j∈C(i), rkey_i=ckey_j} S_ij,
    clse_j = log Σ_{i∈C(j)} e^{S_ij},  S_ij = scale·⟨q̂_i, k̂_j⟩.
    """

    @staticmethod
    def forward(ctx, q, k, scale, extra, row_key, col_key, opts: EngineOptions,
                impl: ModuleType, deterministic: bool):
        rq = impl.inverse_norms(q, opts.normalize)
        rk = rq if k is q else impl.inverse_norms(k, opts.normalize)
        lse, pos, clse = impl.forward(q, k, rq, rk, scale, row_key, col_key, extra,
                                      opts.mask_diag, opts.need_col)
        ctx.save_for_backward(q, k, rq, rk, scale, row_key, col_key, lse, clse, extra)
        ctx.opts, ctx.impl, ctx.deterministic = opts, impl, deterministic
        ctx.has_extra = extra is not None
        return lse, pos, clse

    @staticmethod
    def backward(ctx, g_lse, g_pos, g_clse):
        q, k, rq, rk, scale, row_key, col_key, lse, clse, extra = ctx.saved_tensors
        opts = ctx.opts
        g_lse = _dense(g_lse, lse)
        g_pos = _dense(g_pos, lse)
        g_clse = _dense(g_clse, clse)
        dq, dk, dscale = ctx.impl.backward(
            q, k, rq, rk, scale, row_key, col_key, lse, clse, g_lse, g_pos, g_clse,
            opts.mask_diag, opts.normalize, ctx.deterministic)
        d_extra = None
        if ctx.has_extra and ctx.needs_input_grad[3]:
            # The extra logit is one more softmax candidate: d lse / d extra = its prob.
            d_extra = (g_lse * torch.exp(extra.to(lse.dtype) - lse)).to(extra.dtype)
        d_scale = dscale.to(scale.dtype) if ctx.needs_input_grad[2] else None
        return dq, dk, d_scale, d_extra, None, None, None, None, None


def _dense(grad, like):
    if grad is None:
        return torch.zeros_like(like)
    return grad.to(like.dtype).contiguous()


def softmax_engine(q, k, scale, *, impl: ModuleType, row_key, col_key, extra=None,
                   opts: EngineOptions = EngineOptions()):
    """Run the engine.

    q (N, D) and k (M, D) share dtype and device (pass the same tensor for self-similarity);
    scale: 0-dim tensor (its gradient is returned); row_key (N,), col_key (M,) int64;
    extra (N,) optional logit joined to each row's candidates.
    Returns lse (N,), pos (N,), clse (M,) (empty unless opts.need_col), float32 (float64
    for float64 inputs).
    """
    shared = k is q
    q = q.contiguous()
    k = q if shared else k.contiguous()
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    scale = scale.to(acc)
    if extra is not None:
        extra = extra.to(acc).contiguous()
    deterministic = torch.are_deterministic_algorithms_enabled()
    return SoftmaxEngineFunction.apply(q, k, scale, extra, row_key.contiguous(),
                                       col_key.contiguous(), opts, impl, deterministic)
