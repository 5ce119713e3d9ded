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

Anchors with at most DIRECT_SLOTS positives (the usual P×K batches) skip the sort: each
positive is compared against the row directly, one positive at a time, in O(S·N) per
anchor with the same predicates and tie rules.

The gradient is a strip product: with W the (B, N) weights on the distances,
dX[A] += rowsum(W')·X[A] − W'·X and dX += colsum(W')·X − W'ᵀ·X[A], W' = W·∂d/∂d²·2.
A reduced loss forms its gradient in the same sweep (O(N·D) kept for the backward);
``reduction="none"`` sweeps again in the backward with the per-row upstream weights.
The sweep is one custom operator, so ``torch.compile`` traces it as a single node.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ..engines.library import backend_name, distance_strip

# Values per strip: the fp64 statistics keep ~20 strip-sized temporaries, ~40 MiB here.
STRIP_ELEMENTS = 1 << 18
MIN_STRIP_ROWS = 8


def strip_rows(n: int) -> int:
    """Anchors per strip for a batch of n rows: at most STRIP_ELEMENTS values and at most
    1/32 of the rows (so no strip is ever a large part of the N×N matrix), at least
    MIN_STRIP_ROWS (short rows: the per-strip overhead dominates)."""
    return max(1, min(n, max(MIN_STRIP_ROWS, min(STRIP_ELEMENTS // max(n, 1), n // 32))))


def triplet_strip_loss(x, labels, margin, mining: str, squared: bool, impl, reduction):
    """x (N, D) prepared rows (normalized where asked, fp32/fp64), labels (N,) int64,
    margin 0-dim tensor. "none": (N,) per-anchor sums of the triplet (batch-all) or
    positive-pair (semi-hard) losses; "sum": their total; "mean": the total over the
    active triplets (batch-all) or the positive pairs (semi-hard), 0 when there are none.

    A reduced loss computes its gradient in the same sweep (the upstream gradient is then
    one number); "none" recomputes the strips in the backward with the per-row weights."""
    backend = backend_name(impl)
    if reduction == "none":
        return TripletStrips.apply(x, margin, labels, mining, squared, backend)
    return TripletStripsReduced.apply(x, margin, labels, mining, squared, backend,
                                      reduction == "mean")


class TripletStrips(torch.autograd.Function):
    """(x (N, D), margin 0-dim) -> rows (N,); the backward sweeps the strips again."""

    @staticmethod
    def forward(ctx, x, margin, labels, mining, squared, backend):
        rows, _, _, _ = triplet_strips(x.detach(), margin.detach(), labels, mining, squared,
                                       None, backend)
        ctx.save_for_backward(x, margin, labels)
        ctx.options = (mining, squared, backend)
        return rows

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_rows):
        x, margin, labels = ctx.saved_tensors
        mining, squared, backend = ctx.options
        _, _, dx, dmargin = triplet_strips(x, margin, labels, mining, squared,
                                           g_rows.contiguous(), backend)
        return (dx if ctx.needs_input_grad[0] else None,
                dmargin.to(margin.dtype) if ctx.needs_input_grad[1] else None,
                None, None, None, None)


class TripletStripsReduced(torch.autograd.Function):
    """(x (N, D), margin 0-dim) -> the sum or mean, 0-dim; one sweep gives the value and,
    when an input needs it, the gradient (kept until the backward scales it)."""

    @staticmethod
    def forward(ctx, x, margin, labels, mining, squared, backend, mean):
        grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        ones = torch.ones(x.shape[0], dtype=torch.float64, device=x.device) if grad else None
        rows, count, dx, dmargin = triplet_strips(x.detach(), margin.detach(), labels, mining,
                                                  squared, ones, backend)
        weight = 1.0 / count.clamp_min(1) if mean else torch.ones_like(count)
        total = (rows.to(torch.float64).sum() * weight).to(x.dtype)
        if grad:
            ctx.save_for_backward(dx, dmargin * weight, weight)
        return total

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_total):
        dx, dmargin, weight = ctx.saved_tensors
        g = g_total.to(torch.float64)
        return ((dx * (g * weight).to(dx.dtype)) if ctx.needs_input_grad[0] else None,
                (g * dmargin).to(g_total.dtype) if ctx.needs_input_grad[1] else None,
                None, None, None, None, None)


@torch.library.custom_op("contrastive_kernels::triplet_strips", mutates_args=())
def triplet_strips(x: Tensor, margin: Tensor, labels: Tensor, mining: str, squared: bool,
                   g_rows: Optional[Tensor], backend: str
                   ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One sweep over the strips as an operator (``torch.compile`` sees one opaque node;
    the sort sizes and the loop over strips are data-dependent): x (N, D), margin 0-dim,
    labels (N,) int64, g_rows (N,) float64 or None. Returns rows (N,) in x's dtype, count
    0-dim float64, and dx (N, D) (or (0, D) without g_rows) and dmargin 0-dim float64."""
    out = _run(x, margin, labels, mining, squared, backend, g_rows)
    dx = out.dx if out.dx is not None else x.new_empty((0, x.shape[1]))
    return out.rows, out.count, dx, out.dmargin


@triplet_strips.register_fake
def _(x, margin, labels, mining, squared, g_rows, backend):
    wide = dict(dtype=torch.float64, device=x.device)
    return (x.new_empty((x.shape[0],)), torch.empty((), **wide),
            x.new_empty((x.shape[0] if g_rows is not None else 0, x.shape[1])),
            torch.empty((), **wide))


class _Sweep:
    """rows (N,), count 0-dim; with an upstream gradient dx (N, D) and dmargin 0-dim."""

    def __init__(self, rows, count, dx, dmargin):
        self.rows, self.count, self.dx, self.dmargin = rows, count, dx, dmargin


def _run(x, margin, labels, mining, squared, backend, g_rows) -> _Sweep:
    """One sweep over the strips; g_rows (N,) (or None: values only) weights each row."""
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
    finite = bool(torch.isfinite(m))
    for row0 in range(0, n, b):
        nb = min(b, n - row0)
        d2 = distance_strip(x, sq, row0, nb, backend).to(torch.float64)
        d = d2 if squared else d2.sqrt()
        same = labels[row0:row0 + nb, None] == labels[None, :]
        pos = same.clone()
        pos.diagonal(offset=row0).fill_(False)  # (r, row0 + r): the anchor itself
        out = block(d, pos, ~same, m, finite and bool(torch.isfinite(d2).all()))
        rows[row0:row0 + nb] = out.rows
        count += out.count.sum()
        if g_rows is None:
            continue
        g = g_rows[row0:row0 + nb].to(torch.float64)
        dmargin += (g * out.margin_slope).sum()
        weights = out.weights * g[:, None]
        _strip_grad(x, row0, nb, _distance_chain(weights, d, squared).to(x.dtype), dx)
    return _Sweep(rows.to(x.dtype), count, dx, dmargin)


class _Block:
    """A strip's results: rows (B,), count (B,), weights (B, N) on the distances,
    margin_slope (B,) = ∂rows/∂margin."""

    def __init__(self, rows, count, weights, margin_slope):
        self.rows, self.count = rows, count
        self.weights, self.margin_slope = weights, margin_slope


def _padded_cumsum(v, dtype=None):
    """(B, N+1): 0 followed by the running sum along dim 1."""
    out = torch.zeros((v.shape[0], v.shape[1] + 1), dtype=dtype or v.dtype, device=v.device)
    torch.cumsum(v, 1, dtype=out.dtype, out=out[:, 1:])
    return out


def _slot_positions(mask):
    """(positions (B, S), filled (B, S)): the positions along dim 1 of each row's True
    entries, in order, padded with the row length (filled False) to the longest row."""
    nb, n = mask.shape
    row, at = mask.nonzero(as_tuple=True)  # row-major: each row's in order
    per_row = torch.bincount(row, minlength=nb)
    slots = int(per_row.max()) if row.numel() else 0
    first = _padded_cumsum(per_row[None, :])[0, :nb]
    positions = torch.full((nb, slots), n, dtype=torch.int64, device=mask.device)
    positions[row, torch.arange(row.numel(), device=mask.device) - first[row]] = at
    return positions, positions < n


class _Sorted:
    """One strip sorted per row (stable: ties in column order, NaN last) with its
    positives gathered into slots: slot s of row a holds the row's s-th positive in
    sorted order (so the slots' distances ascend); rows with fewer positives are padded
    (``filled`` False)."""

    def __init__(self, d, pos, neg):
        n = d.shape[1]
        self.vals, self.order = torch.sort(d, dim=1, stable=True)
        self.pos_s, self.neg_s = pos.gather(1, self.order), neg.gather(1, self.order)
        self.slot_pos, self.filled = _slot_positions(self.pos_s)
        safe = self.slot_pos.clamp_max(n - 1)
        self.slot_d = torch.where(self.filled, self.vals.gather(1, safe), 0.0)
        self.slot_col = self.order.gather(1, safe)     # its column


class _Direct:
    """A strip's positives gathered into slots in column order, unsorted: for rows with
    few positives, comparing each against the row (O(S·N)) beats sorting it."""

    def __init__(self, d, pos):
        n = d.shape[1]
        self.slot_col, self.filled = _slot_positions(pos)
        self.slot_col = self.slot_col.clamp_max(n - 1)
        self.slot_d = torch.where(self.filled, d.gather(1, self.slot_col), 0.0)


# Up to this many positives per anchor the strips compare them directly (O(S·N) per
# anchor) instead of sorting (O(N log N)); the usual P×K batches (K ≤ 9) take it.
DIRECT_SLOTS = 8


def _direct(pos) -> bool:
    return int(pos.sum(1).max()) <= DIRECT_SLOTS if pos.numel() else True


def _batch_all_block(d, pos, neg, m, finite) -> _Block:
    """d (B, N) distances (fp64), pos/neg (B, N) masks, m the margin; ``finite``: no
    NaN or ∞ anywhere in d and m (the rules for those are then skipped)."""
    if _direct(pos):
        return _batch_all_direct(d, pos, neg, m, finite)
    return _batch_all_sorted(d, pos, neg, m, finite)


def _batch_all_sorted(d, pos, neg, m, finite) -> _Block:
    inf = float("inf")
    st = _Sorted(d, pos, neg)
    nb, n = d.shape
    neg_ok = st.neg_s if finite else st.neg_s & ~st.vals.isnan()
    cum_neg = _padded_cumsum(neg_ok, torch.float64)
    cum_neg_d = _padded_cumsum(torch.where(neg_ok, st.vals, 0.0))
    # Positives: k_p negatives closer than t_p (plus the triplets whose loss is NaN).
    t = st.slot_d + m
    t_ok = st.filled if finite else st.filled & ~t.isnan()
    r = torch.searchsorted(st.vals, torch.where(t_ok, t, inf), side="left")
    k_fin, s_fin = cum_neg.gather(1, r), cum_neg_d.gather(1, r)
    contrib = torch.where(t_ok & (k_fin > 0), k_fin * t - s_fin, 0.0)
    # Negatives: positive p activates the sorted positions before r_p, so the number of
    # positives activating position i is #{p : r_p > i} (a histogram of r, summed).
    hist = torch.zeros((nb, n + 1), dtype=torch.float64, device=d.device)
    hist.scatter_add_(1, torch.where(t_ok, r, n), t_ok.to(torch.float64))
    w_s = t_ok.sum(1, keepdim=True) - hist.cumsum(1)[:, :n]
    k, w_s, rows = _finish_batch_all(d, pos, neg, st.filled, st.vals, t, t_ok, k_fin, w_s,
                                     contrib.sum(1), finite)
    weights = torch.zeros_like(d).scatter_(1, st.order, torch.where(st.neg_s, -w_s, 0.0))
    weights.scatter_add_(1, st.slot_col, k)  # padded slots add 0
    count = k.sum(1)
    return _Block(rows, count, weights, count)


def _batch_all_direct(d, pos, neg, m, finite) -> _Block:
    sl = _Direct(d, pos)
    t = sl.slot_d + m
    t_ok = sl.filled if finite else sl.filled & ~t.isnan()
    neg_d = torch.where(neg, d, float("nan"))  # NaN compares false: non-negatives drop out
    k_fin = torch.zeros_like(t)
    contrib = torch.zeros_like(d[:, 0])
    w = torch.zeros_like(d)
    for j in range(t.shape[1]):  # one slot at a time: temporaries stay strip-sized
        tj = t[:, j:j + 1]
        active = (neg_d < tj) & t_ok[:, j:j + 1]  # negatives closer than the threshold
        k_fin[:, j] = active.sum(1)
        contrib += torch.where(active, tj - neg_d, 0.0).sum(1)
        w += active
    k, w, rows = _finish_batch_all(d, pos, neg, sl.filled, d, t, t_ok, k_fin, w, contrib,
                                   finite)
    weights = torch.where(neg, -w, 0.0)
    weights.scatter_add_(1, sl.slot_col, k)  # padded slots add 0
    count = k.sum(1)
    return _Block(rows, count, weights, count)


def _finish_batch_all(d, pos, neg, filled, d_w, t, t_ok, k_fin, w, rows, finite):
    """(k (B, S), w, rows): the finite counts as they are, or with the non-finite rules."""
    if finite:
        return torch.where(filled, k_fin, 0.0), w, rows
    return _nonfinite_batch_all(d, pos, neg, filled, d_w, t, t_ok, k_fin, w, rows)


def _nonfinite_batch_all(d, pos, neg, filled, d_w, t, t_ok, k_fin, w_s, rows):
    """The counts with the triplets whose loss is NaN (NaN distance or margin, ∞ − ∞)
    active, as ``~(loss <= 0)`` has them, and NaN rows where such a triplet exists;
    w_s counts per entry of d_w (the strip, sorted or not)."""
    inf = float("inf")
    d_nan = d.isnan()
    n_pos, n_neg = pos.sum(1, keepdim=True), neg.sum(1, keepdim=True)
    n_nan_neg = (neg & d_nan).sum(1, keepdim=True)
    n_inf_neg = (neg & (d == inf)).sum(1, keepdim=True)
    t_nan = filled & ~t_ok
    k = torch.where(t_nan, n_neg, k_fin + n_nan_neg + (t == inf) * n_inf_neg)
    k = torch.where(filled, k, 0.0)
    n_nan_t = t_nan.sum(1, keepdim=True)
    n_inf_t = (t_ok & (t == inf)).sum(1, keepdim=True)
    w_s = torch.where(d_w.isnan(), n_pos, w_s + n_nan_t + (d_w == inf) * n_inf_t)
    bad = ((t_nan.any(1) & (n_neg[:, 0] > 0)) | ((neg & d_nan).any(1) & (n_pos[:, 0] > 0))
           | ((t_ok & (t == inf)).any(1) & (n_inf_neg[:, 0] > 0)))
    return k, w_s, torch.where(bad, float("nan"), rows)


def _semi_hard_block(d, pos, neg, m, finite) -> _Block:
    """d (B, N) distances (fp64), pos/neg (B, N) masks, m the margin; ``finite``: no NaN
    or ∞ in d and m."""
    nb, n = d.shape
    if _direct(pos):
        sl = _Direct(d, pos)
        slot_d, slot_col, filled = sl.slot_d, sl.slot_col, sl.filled
        d_neg, neg_col = _semi_hard_direct(d, neg, slot_d)
    else:
        st = _Sorted(d, pos, neg)
        slot_d, slot_col, filled = st.slot_d, st.slot_col, st.filled
        d_neg, neg_col = _semi_hard_sorted(st, n)
    has_neg = neg.any(1, keepdim=True)
    d_neg = torch.where(has_neg, d_neg, 0.0)
    loss = slot_d - d_neg + m
    bad = (torch.zeros(nb, dtype=torch.bool, device=d.device) if finite
           else ((d.isnan() & (pos | neg)).any(1)) & pos.any(1))
    total = torch.where(filled, loss.clamp_min(0), 0.0).sum(1)
    rows = torch.where(bad, float("nan"), total)
    active = (filled & (loss > 0) & ~bad[:, None]).to(torch.float64)
    weights = torch.zeros_like(d)
    weights.scatter_add_(1, slot_col, active)
    weights.scatter_add_(1, neg_col, -active * has_neg)
    return _Block(rows, pos.sum(1).to(torch.float64), weights, active.sum(1))


def _semi_hard_sorted(st: _Sorted, n: int):
    """(d_neg (B, S), its column) per positive slot, from the sorted row: the first
    negative after the positive's last tie, else the first of the farthest negatives."""
    nb = st.vals.shape[0]
    slot = torch.arange(n, device=st.vals.device).expand(nb, n)
    # nxt[i]: the first sorted position ≥ i holding a negative (n if none).
    nxt = torch.where(st.neg_s, slot, n).flip(1).cummin(1).values.flip(1)
    nxt = torch.nn.functional.pad(nxt, (0, 1), value=n)
    query = torch.where(st.filled & ~st.slot_d.isnan(), st.slot_d, 0.0).contiguous()
    beyond = nxt.gather(1, torch.searchsorted(st.vals, query, side="right"))
    last = torch.where(st.neg_s & ~st.vals.isnan(), slot, -1).max(1, keepdim=True).values
    far_value = st.vals.gather(1, last.clamp_min(0))
    farthest = nxt.gather(1, torch.searchsorted(st.vals, far_value, side="left"))
    chosen = torch.where(beyond < n, beyond, farthest).clamp_max(n - 1)
    return st.vals.gather(1, chosen), st.order.gather(1, chosen)


def _semi_hard_direct(d, neg, slot_d):
    """(d_neg (B, S), its column) per positive slot by comparing against the row: the
    nearest negative strictly farther than the positive (argmin: the first, i.e. lowest,
    column on ties), else the farthest negative (likewise)."""
    far_col = torch.where(neg, d, float("-inf")).argmax(1)
    cols = []
    for j in range(slot_d.shape[1]):  # one slot at a time: temporaries stay strip-sized
        beyond = neg & (d > slot_d[:, j:j + 1])
        near_col = torch.where(beyond, d, float("inf")).argmin(1)
        cols.append(torch.where(beyond.any(1), near_col, far_col))
    col = torch.stack(cols, 1) if cols else far_col[:, None][:, :0]
    return d.gather(1, col), col


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
