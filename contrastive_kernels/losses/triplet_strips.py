"""Batch-all and semi-hard triplet losses over distance strips: exact, O(N·D) memory.

Neither strategy reduces to per-row statistics of one pass: batch-all needs, per anchor,
how each positive distance ranks among the negative distances; semi-hard needs, per
positive pair, the nearest negative beyond it. Both are order statistics of one anchor's
N distances, so the engine hands them over a block of anchors at a time: the kernel
``distance_strip`` (Triton, C++ CPU, CUDA C++) computes a (B, N) strip of squared
distances (near-coincident pairs from the difference, as every distance in the library),
and this module sorts each strip row once and answers every question of that anchor by
binary search, in O(N log N) per anchor. B is chosen so that a strip holds at most
``STRIP_ELEMENTS`` values: the N×N matrix (let alone the N×N×N triplets) never exists.

Batch-all, per anchor a with threshold t_p = d_ap + margin for each positive p:
  k_p = #{negatives n : d_an < t_p}   (the active triplets of pair (a, p)),
  Σ_{active} (t_p − d_an) = k_p·t_p − (prefix sum of the sorted negative distances),
  w_n = #{positives p : t_p > d_an}   (the active triplets of pair (a, n)),
so the loss, the active count and the gradient weights (+k_p on d_ap, −w_n on d_an) all
come from one sort. A triplet whose loss is NaN (a NaN distance or margin, or ∞ − ∞)
counts as active, as ``~(loss <= 0)`` does in a brute-force enumeration.

Semi-hard, per positive pair (a, p): the first negative after position
``searchsorted(d_ap, right)`` in the sorted row (the nearest negative strictly farther
than the positive), else the farthest negative, else (no negative at all) distance 0 with
no gradient, sentence-transformers' and TensorFlow Addons' fallback to the row minimum
(the anchor itself). Ties go to the lowest column index (the sort is stable).

The gradient is a strip product: with W the (B, N) weights on the distances,
dX[A] += rowsum(W')·X[A] − W'·X and dX += colsum(W')·X − W'ᵀ·X[A], W' = W·∂d/∂d²·2.
The backward recomputes the strips (the forward keeps O(N) per anchor).
"""
from __future__ import annotations

import torch

from ..engines.library import backend_name, distance_strip

# Values per strip (fp64 statistics: ~10 strip-sized temporaries, ~80 MiB at this size).
STRIP_ELEMENTS = 1 << 20
MIN_STRIP_ROWS = 8


def strip_rows(n: int) -> int:
    """Anchors per strip for a batch of n rows."""
    return max(1, min(n, max(MIN_STRIP_ROWS, STRIP_ELEMENTS // max(n, 1))))


def triplet_strip_loss(x, labels, margin, mining: str, squared: bool, impl):
    """x (N, D) prepared rows (normalized where asked, fp32/fp64), labels (N,) int64,
    margin 0-dim tensor. Returns rows (N,) per-anchor sums of the triplet (batch-all) or
    positive-pair (semi-hard) losses, and count 0-dim: the active triplets (batch-all) or
    the positive pairs (semi-hard), the denominator of the mean."""
    return TripletStrips.apply(x, margin, labels, mining, squared, backend_name(impl))


class TripletStrips(torch.autograd.Function):
    """(x (N, D), margin 0-dim) -> (rows (N,), count 0-dim, not differentiable)."""

    @staticmethod
    def forward(ctx, x, margin, labels, mining, squared, backend):
        rows, count, _, _ = _run(x.detach(), margin.detach(), labels, mining, squared,
                                 backend, g_rows=None)
        ctx.save_for_backward(x, margin, labels)
        ctx.options = (mining, squared, backend)
        ctx.mark_non_differentiable(count)
        return rows, count

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_rows, _g_count):
        x, margin, labels = ctx.saved_tensors
        mining, squared, backend = ctx.options
        _, _, dx, dmargin = _run(x, margin, labels, mining, squared, backend, g_rows=g_rows)
        return (dx if ctx.needs_input_grad[0] else None,
                dmargin.to(margin.dtype) if ctx.needs_input_grad[1] else None,
                None, None, None, None)


def _run(x, margin, labels, mining, squared, backend, g_rows):
    """One sweep over the strips: (rows, count) and, given upstream g_rows (N,), the
    gradients (dx (N, D), dmargin 0-dim)."""
    n = x.shape[0]
    x = x.contiguous()
    sq = x.pow(2).sum(1)
    m = margin.to(torch.float64)
    block = _BLOCKS[mining]
    rows = torch.zeros(n, dtype=torch.float64, device=x.device)
    count = torch.zeros((), dtype=torch.float64, device=x.device)
    dx = torch.zeros_like(x) if g_rows is not None else None
    dmargin = torch.zeros((), dtype=torch.float64, device=x.device)
    b = strip_rows(n)
    for row0 in range(0, n, b):
        nb = min(b, n - row0)
        d2 = distance_strip(x, sq, row0, nb, backend).to(torch.float64)
        d = d2 if squared else d2.sqrt()
        own = labels[row0:row0 + nb, None]
        same = own == labels[None, :]
        col = torch.arange(n, device=x.device)
        self_pair = col[None, :] == (row0 + torch.arange(nb, device=x.device))[:, None]
        pos, neg = same & ~self_pair, ~same
        out = block(d, pos, neg, m)
        rows[row0:row0 + nb] = out.rows
        count += out.count.sum()
        if g_rows is None:
            continue
        g = g_rows[row0:row0 + nb].to(torch.float64)
        dmargin += (g * out.margin_slope).sum()
        weights = out.weights * g[:, None]
        _strip_grad(x, row0, nb, _distance_chain(weights, d, squared).to(x.dtype), dx)
    return rows.to(x.dtype), count, dx, dmargin


class _Block:
    """A strip's results: rows (B,), count (B,), weights (B, N) on the distances,
    margin_slope (B,) = ∂rows/∂margin."""

    def __init__(self, rows, count, weights, margin_slope):
        self.rows, self.count = rows, count
        self.weights, self.margin_slope = weights, margin_slope


def _padded_cumsum(v):
    """(B, N+1): 0 followed by the running sum along dim 1."""
    return torch.nn.functional.pad(v.cumsum(1), (1, 0))


def _batch_all_block(d, pos, neg, m) -> _Block:
    """d (B, N) distances (fp64), pos/neg (B, N) masks, m the margin."""
    inf = float("inf")
    vals, order = torch.sort(d, dim=1, stable=True)  # NaN last
    pos_s, neg_s = pos.gather(1, order), neg.gather(1, order)
    nan_s = vals != vals
    neg_ok = neg_s & ~nan_s
    cum_neg = _padded_cumsum(neg_ok.to(torch.float64))
    cum_neg_d = _padded_cumsum(torch.where(neg_ok, vals, 0.0))
    n_pos, n_neg = pos.sum(1, keepdim=True), neg.sum(1, keepdim=True)
    n_nan_neg = (neg & d.isnan()).sum(1, keepdim=True)
    n_inf_neg = (neg & (d == inf)).sum(1, keepdim=True)
    # Positives: k_p negatives closer than t_p (plus the NaN triplets).
    t = d + m
    t_nan = t.isnan()
    r = torch.searchsorted(vals, torch.where(t_nan, inf, t), side="left")
    k_fin, s_fin = cum_neg.gather(1, r), cum_neg_d.gather(1, r)
    k = torch.where(t_nan, n_neg, k_fin + n_nan_neg + (t == inf) * n_inf_neg)
    k = torch.where(pos, k, 0.0)
    take = pos & ~t_nan & (k_fin > 0)
    contrib = torch.where(take, k_fin * t - s_fin, 0.0)
    # Negatives: w_n positives whose threshold exceeds d_an (t is monotone in d, so the
    # positives' thresholds are sorted in the row's order: a running max searches them).
    t_s = vals + m
    pos_ok = pos_s & ~t_s.isnan()
    cum_pos = _padded_cumsum(pos_ok.to(torch.float64))
    run_t = torch.where(pos_ok, t_s, -inf).cummax(1).values
    d_nan = d.isnan()
    le = cum_pos.gather(1, torch.searchsorted(run_t, torch.where(d_nan, 0.0, d), side="right"))
    n_nan_t = (pos & t_nan).sum(1, keepdim=True)
    n_inf_t = (pos & (t == inf)).sum(1, keepdim=True)
    w = torch.where(d_nan, n_pos, cum_pos[:, -1:] - le + n_nan_t + (d == inf) * n_inf_t)
    w = torch.where(neg, w, 0.0)
    bad = (((pos & t_nan).any(1) & (n_neg[:, 0] > 0))
           | ((neg & d_nan).any(1) & (n_pos[:, 0] > 0))
           | ((pos & (t == inf)).any(1) & (n_inf_neg[:, 0] > 0)))
    rows = torch.where(bad, float("nan"), contrib.sum(1))
    count = k.sum(1)
    return _Block(rows, count, k - w, count)


def _semi_hard_block(d, pos, neg, m) -> _Block:
    """d (B, N) distances (fp64), pos/neg (B, N) masks, m the margin."""
    nb, n = d.shape
    vals, order = torch.sort(d, dim=1, stable=True)  # NaN last; ties by column index
    neg_s = neg.gather(1, order)
    slot = torch.arange(n, device=d.device).expand(nb, n)
    # nxt[i]: the first sorted position ≥ i holding a negative (n if none).
    nxt = torch.where(neg_s, slot, n).flip(1).cummin(1).values.flip(1)
    nxt = torch.nn.functional.pad(nxt, (0, 1), value=n)
    d_nan = d.isnan()
    beyond = nxt.gather(1, torch.searchsorted(vals, torch.where(d_nan, 0.0, d),
                                              side="right"))
    last = torch.where(neg_s & ~vals.isnan(), slot, -1).max(1, keepdim=True).values
    far_value = vals.gather(1, last.clamp_min(0))
    farthest = nxt.gather(1, torch.searchsorted(vals, far_value, side="left"))
    chosen = torch.where(beyond < n, beyond, farthest).clamp_max(n - 1)
    has_neg = neg.any(1, keepdim=True)
    d_neg = torch.where(has_neg, vals.gather(1, chosen), 0.0)
    loss = d - d_neg + m
    bad = ((d_nan & (pos | neg)).any(1)) & pos.any(1)
    rows = torch.where(bad, float("nan"), torch.where(pos, loss.clamp_min(0), 0.0).sum(1))
    active = (pos & (loss > 0) & ~bad[:, None]).to(torch.float64)
    weights = active.clone()
    weights.scatter_add_(1, order.gather(1, chosen), -active * has_neg)
    return _Block(rows, pos.sum(1).to(torch.float64), weights, active.sum(1))


_BLOCKS = {"batch_all": _batch_all_block, "semi_hard": _semi_hard_block}


def _distance_chain(weights, d, squared):
    """Weights on d → weights on the pair's squared distance, times 2 (∂d²/∂x_a =
    2(x_a − x_j)): 2·w (squared) or w/d, 0 where d = 0 (the reference's safe sqrt)."""
    if squared:
        return 2 * weights
    safe = torch.where(d > 0, d, 1.0)
    return torch.where(d > 0, weights / safe, torch.where(d == d, 0.0, d))


def _strip_grad(x, row0, nb, w, dx):
    """dx += the gradient of Σ w_aj·d²_aj/2 over the strip's pairs (a ∈ rows, j)."""
    xa = x[row0:row0 + nb]
    dx[row0:row0 + nb] += w.sum(1, keepdim=True) * xa - w @ x
    dx += w.sum(0)[:, None] * x - w.T @ xa
