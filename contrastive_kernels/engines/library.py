"""The kernel engines as PyTorch custom operators (``torch.library``), namespace
``contrastive_kernels``.

Every kernel call of the single-process losses goes through these operators, so that
``torch.compile`` sees each as one opaque node with a fake (meta) implementation for
shapes and a registered autograd formula whose backward is again an operator: a compiled
model plus our loss traces with ``fullgraph=True``, and eager mode runs the same code.

The kernel backend travels as a string (``"triton"``, ``"cuda"``, ``"cpu"``) and the
engine module is looked up inside the operator; ``shared`` says that ``k`` is ``q`` (one
set of norms, as in self-similarity). Outputs never alias inputs or each other: where the
engine would reuse ``rq`` for ``rk``, the operator returns an empty ``rk`` instead.

Shapes: q (N, D), k (M, D) of one floating dtype; rq (N,), rk (M,) (or (0,) when shared)
in the accumulation dtype (float64 for float64 inputs, else float32); keys int64.
"""
from __future__ import annotations

import importlib
from typing import Optional

import torch
from torch import Tensor

_NS = "contrastive_kernels"
_ENGINES: dict = {}

# Extra log-sum-exps over the negatives one engine pass computes (every backend's limit).
MAX_EXTRA_LSE = 2


def engine(backend: str):
    """The engine module of a kernel backend name (imported once)."""
    module = _ENGINES.get(backend)
    if module is None:
        module = importlib.import_module(f"contrastive_kernels.backends.{backend}")
        _ENGINES[backend] = module
    return module


def backend_name(impl) -> str:
    """The backend name of an engine module (``contrastive_kernels.backends.cpu`` ->
    ``"cpu"``)."""
    return impl.__name__.rsplit(".", 1)[-1]


def _check_width(x: Tensor, name: str) -> None:
    """Every engine handles zero rows (N = 0 or M = 0); a zero feature width is refused on
    every backend alike (the C++ boundaries refuse it too)."""
    if x.dim() != 2 or x.shape[1] < 1:
        raise ValueError(f"{name} must be 2-D (rows, D) with D >= 1, got shape "
                         f"{tuple(x.shape)}")


def _acc(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _vec(x: Tensor, n) -> Tensor:
    return x.new_empty((n,), dtype=_acc(x))


def _norms(impl, q: Tensor, k: Tensor, normalize: bool, shared: bool):
    """(rq, rk): the inverse norms of q and k, computed once when k is q (rk is rq)."""
    rq = impl.inverse_norms(q, normalize)
    return rq, (rq if shared else impl.inverse_norms(k, normalize))


def _own(rq: Tensor, rk: Tensor) -> Tensor:
    """rk as an operator output: empty where it is rq (outputs may not alias)."""
    return rq.new_empty((0,)) if rk is rq else rk


def _multipliers(xmul: Optional[list[float]], like: Tensor) -> Optional[Tensor]:
    """The extra log-sum-exps' multipliers as the (T,) tensor the engines read (None when
    there are none), in like's dtype and on its device."""
    if not xmul:
        return None
    if len(xmul) > MAX_EXTRA_LSE:
        raise ValueError(f"xmul: at most {MAX_EXTRA_LSE} extra log-sum-exps per pass, "
                         f"got {len(xmul)}")
    return torch.tensor(xmul, dtype=like.dtype, device=like.device)


def _distinct(dq: Tensor, dk: Tensor) -> Tensor:
    """dk as an operator output: a copy where the engine returned dq itself."""
    return dk.clone() if dk is dq else dk


# ---------------------------------------------------------------------------------------
# The softmax engine (engines/softmax.py).
# ---------------------------------------------------------------------------------------
@torch.library.custom_op(f"{_NS}::softmax_forward", mutates_args=())
def softmax_forward(q: Tensor, k: Tensor, scale: Tensor, extra: Optional[Tensor],
                    row_key: Tensor, col_key: Tensor, mask_diag: bool, need_col: bool,
                    normalize: bool, shared: bool, deterministic: bool, backend: str,
                    xmul: Optional[list[float]] = None
                    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(lse (N,), pos (N,), clse (M,) or (0,), xlse (T, N), rq (N,), rk (M,) or (0,) when
    shared); xmul: the T ≤ MAX_EXTRA_LSE multipliers μ_t of the extra log-sum-exps
    xlse_ti = log Σ_{negatives j of row i} e^{μ_t·S_ij} (T = 0 when None)."""
    _check_width(q, "q")
    if xmul and need_col:
        raise ValueError("xmul: extra log-sum-exps are row statistics; a pass computes them "
                         "or the column log-sum-exp (need_col), not both")
    impl = engine(backend)
    rq, rk = _norms(impl, q, k, normalize, shared)
    lse, pos, clse, xlse = impl.forward(q, k, rq, rk, scale, row_key, col_key, extra,
                                        mask_diag, need_col, _multipliers(xmul, rq))
    return lse, pos, clse, xlse, rq, _own(rq, rk)


@softmax_forward.register_fake
def _(q, k, scale, extra, row_key, col_key, mask_diag, need_col, normalize, shared,
      deterministic, backend, xmul=None):
    n, m = q.shape[0], k.shape[0]
    return (_vec(q, n), _vec(q, n), _vec(q, m if need_col else 0),
            q.new_empty((len(xmul or ()), n), dtype=_acc(q)), _vec(q, n),
            _vec(q, 0 if shared else m))


@torch.library.custom_op(f"{_NS}::softmax_backward", mutates_args=())
def softmax_backward(q: Tensor, k: Tensor, rq: Tensor, rk: Tensor, scale: Tensor,
                     row_key: Tensor, col_key: Tensor, lse: Tensor, clse: Tensor,
                     g_lse: Tensor, g_pos: Tensor, g_clse: Tensor, mask_diag: bool,
                     normalize: bool, deterministic: bool, backend: str,
                     need_dq: bool = True, need_dk: bool = True,
                     xmul: Optional[list[float]] = None, xlse: Optional[Tensor] = None,
                     g_xlse: Optional[Tensor] = None) -> tuple[Tensor, Tensor, Tensor]:
    """(dq (N, D), dk (M, D) in the input dtype, dscale 0-dim); a gradient that is not
    needed (a frozen MoCo queue) is not computed and comes back with 0 rows. xlse and
    g_xlse (T, N): the forward's extra log-sum-exps at multipliers xmul and their
    upstream gradients."""
    mult = _multipliers(xmul, lse)
    extras = {} if mult is None else dict(xmul=mult, xlse=xlse, g_xlse=g_xlse)
    dq, dk, dscale = engine(backend).backward(q, k, rq, rk, scale, row_key, col_key, lse,
                                              clse, g_lse, g_pos, g_clse, mask_diag,
                                              normalize, deterministic, need_dq=need_dq,
                                              need_dk=need_dk, **extras)
    return dq, _distinct(dq, dk), dscale


@softmax_backward.register_fake
def _(q, k, rq, rk, scale, row_key, col_key, lse, clse, g_lse, g_pos, g_clse, mask_diag,
      normalize, deterministic, backend, need_dq=True, need_dk=True, xmul=None, xlse=None,
      g_xlse=None):
    return (q.new_empty((q.shape[0] if need_dq else 0, q.shape[1])),
            k.new_empty((k.shape[0] if need_dk else 0, k.shape[1])), scale.new_empty(()))


def _softmax_setup(ctx, inputs, output):
    (q, k, scale, extra, row_key, col_key, mask_diag, _need_col, normalize, shared,
     deterministic, backend, *rest) = inputs
    lse, _pos, clse, xlse, rq, rk = output
    ctx.save_for_backward(q, k, rq, rk, scale, row_key, col_key, lse, clse, xlse, extra)
    ctx.flags = (mask_diag, normalize, shared, deterministic, backend,
                 list(rest[0]) if rest and rest[0] else None)


def _softmax_grad(ctx, g_lse, g_pos, g_clse, g_xlse, _g_rq, _g_rk):
    q, k, rq, rk, scale, row_key, col_key, lse, clse, xlse, extra = ctx.saved_tensors
    mask_diag, normalize, shared, deterministic, backend, xmul = ctx.flags
    g_lse, g_pos, g_clse = _dense(g_lse, lse), _dense(g_pos, lse), _dense(g_clse, clse)
    extras = {}
    if xmul is not None:
        extras = dict(xmul=xmul, xlse=xlse, g_xlse=_dense(g_xlse, xlse))
    # With k is q both gradients flow into q; otherwise skip the one nobody needs.
    need_dq = ctx.needs_input_grad[0] or shared
    need_dk = ctx.needs_input_grad[1] or shared
    dq, dk, dscale = softmax_backward(q, k, rq, rq if shared else rk, scale, row_key,
                                      col_key, lse, clse, g_lse, g_pos, g_clse, mask_diag,
                                      normalize, deterministic, backend, need_dq, need_dk,
                                      **extras)
    d_extra = None
    if extra is not None and ctx.needs_input_grad[3]:
        # The extra logit is one more softmax candidate: d lse / d extra = its probability.
        d_extra = (g_lse * torch.exp(extra.to(lse.dtype) - lse)).to(extra.dtype)
    return (dq if need_dq else None, dk if need_dk else None,
            dscale.to(scale.dtype) if ctx.needs_input_grad[2] else None, d_extra,
            None, None, None, None, None, None, None, None, None)


def _dense(grad, like):
    """An upstream gradient as a contiguous tensor in like's dtype (zeros where unused)."""
    if grad is None:
        return torch.zeros_like(like)
    return grad.to(like.dtype).contiguous()


torch.library.register_autograd(f"{_NS}::softmax_forward", _softmax_grad,
                                setup_context=_softmax_setup)


# ---------------------------------------------------------------------------------------
# The pairwise engine (engines/pairwise.py). kind: 0 SigLIP, 1 Hadsell.
# ---------------------------------------------------------------------------------------
@torch.library.custom_op(f"{_NS}::pair_forward", mutates_args=())
def pair_forward(q: Tensor, k: Tensor, params: Tensor, row_key: Tensor, col_key: Tensor,
                 kind: int, mask_diag: bool, normalize: bool, shared: bool,
                 deterministic: bool, backend: str) -> tuple[Tensor, Tensor, Tensor]:
    """(rows (N,), rq (N,), rk (M,) or (0,) when shared): the 1-product forward."""
    _check_width(q, "q")
    impl = engine(backend)
    rq, rk = _norms(impl, q, k, normalize, shared)
    rows = impl.pair_forward(kind, q, k, rq, rk, params, row_key, col_key, mask_diag)
    return rows, rq, _own(rq, rk)


@pair_forward.register_fake
def _(q, k, params, row_key, col_key, kind, mask_diag, normalize, shared, deterministic,
      backend):
    return _vec(q, q.shape[0]), _vec(q, q.shape[0]), _vec(q, 0 if shared else k.shape[0])


@torch.library.custom_op(f"{_NS}::pair_backward", mutates_args=())
def pair_backward(q: Tensor, k: Tensor, rq: Tensor, rk: Tensor, params: Tensor,
                  row_key: Tensor, col_key: Tensor, g_row: Tensor, kind: int,
                  mask_diag: bool, normalize: bool, want_rows: bool, deterministic: bool,
                  backend: str, need_dq: bool = True,
                  need_dk: bool = True) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(rows (N,) or (0,) unless want_rows, dq (N, D), dk (M, D), dparams (3,)); a gradient
    that is not needed (a frozen side) comes back with 0 rows, as softmax_backward's."""
    rows, dq, dk, dparams = engine(backend).pair_backward(
        kind, q, k, rq, rk, params, row_key, col_key, g_row, mask_diag, normalize,
        want_rows, deterministic, need_dq=need_dq, need_dk=need_dk)
    return rows, dq, _distinct(dq, dk), dparams


@pair_backward.register_fake
def _(q, k, rq, rk, params, row_key, col_key, g_row, kind, mask_diag, normalize,
      want_rows, deterministic, backend, need_dq=True, need_dk=True):
    return (_vec(q, q.shape[0] if want_rows else 0),
            q.new_empty((q.shape[0] if need_dq else 0, q.shape[1])),
            k.new_empty((k.shape[0] if need_dk else 0, k.shape[1])), torch.empty_like(params))


def _pair_setup(ctx, inputs, output):
    (q, k, params, row_key, col_key, kind, mask_diag, normalize, shared, deterministic,
     backend) = inputs
    _rows, rq, rk = output
    ctx.save_for_backward(q, k, rq, rk, params, row_key, col_key)
    ctx.flags = (kind, mask_diag, normalize, shared, deterministic, backend)


def _pair_grad(ctx, g_rows, _g_rq, _g_rk):
    q, k, rq, rk, params, row_key, col_key = ctx.saved_tensors
    kind, mask_diag, normalize, shared, deterministic, backend = ctx.flags
    # With k is q both gradients flow into q; otherwise skip the one nobody needs.
    need_dq = ctx.needs_input_grad[0] or shared
    need_dk = ctx.needs_input_grad[1] or shared
    _, dq, dk, dparams = pair_backward(q, k, rq, rq if shared else rk, params, row_key,
                                       col_key, _dense(g_rows, rq), kind, mask_diag,
                                       normalize, False, deterministic, backend, need_dq,
                                       need_dk)
    return (dq if need_dq else None, dk if need_dk else None, dparams) + (None,) * 8


torch.library.register_autograd(f"{_NS}::pair_forward", _pair_grad, setup_context=_pair_setup)


@torch.library.custom_op(f"{_NS}::pair_loss_and_grad", mutates_args=())
def pair_loss_and_grad(q: Tensor, k: Tensor, params: Tensor, row_key: Tensor,
                       col_key: Tensor, kind: int, mask_diag: bool, normalize: bool,
                       shared: bool, deterministic: bool, weight: float,
                       backend: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(total 0-dim = weight·Σ_i rows_i, and its gradients dq (N, D), dk (M, D),
    dparams (3,)): a reduced loss's forward and backward in one pass of 3 tile products.
    The autograd formula only scales the returned gradients. The weight (1/count for a
    mean) is applied inside, so half-precision gradients are formed at their final scale."""
    _check_width(q, "q")
    impl = engine(backend)
    rq, rk = _norms(impl, q, k, normalize, shared)
    g_row = torch.full_like(rq, weight)
    rows, dq, dk, dparams = impl.pair_backward(kind, q, k, rq, rk, params, row_key, col_key,
                                               g_row, mask_diag, normalize, True,
                                               deterministic)
    return rows.sum() * weight, dq, _distinct(dq, dk), dparams


@pair_loss_and_grad.register_fake
def _(q, k, params, row_key, col_key, kind, mask_diag, normalize, shared, deterministic,
      weight, backend):
    return _vec(q, 0).sum(), torch.empty_like(q), torch.empty_like(k), torch.empty_like(params)


def _fused_setup(ctx, inputs, output):
    _total, dq, dk, dparams = output
    ctx.save_for_backward(dq, dk, dparams)


def _fused_grad(ctx, g_total, _g_dq, _g_dk, _g_dparams):
    dq, dk, dparams = ctx.saved_tensors
    g = g_total.to(dparams.dtype)
    return (dq * g.to(dq.dtype), dk * g.to(dk.dtype), dparams * g) + (None,) * 9


torch.library.register_autograd(f"{_NS}::pair_loss_and_grad", _fused_grad,
                                setup_context=_fused_setup)


# ---------------------------------------------------------------------------------------
# Batch-hard mining and the triplet backward's scatter (losses/triplet.py).
# ---------------------------------------------------------------------------------------
@torch.library.custom_op(f"{_NS}::hardest_pairs", mutates_args=())
def hardest_pairs(x: Tensor, key: Tensor, normalize: bool,
                  backend: str) -> tuple[Tensor, Tensor]:
    """(pos (N,), neg (N,)) int64: per row of x (N, D) the farthest same-key row (j ≠ i)
    and the nearest other-key row, lowest index on ties, -1 where there is none."""
    _check_width(x, "x")
    impl = engine(backend)
    return tuple(impl.hardest_pairs(x, impl.inverse_norms(x, normalize), key))


@hardest_pairs.register_fake
def _(x, key, normalize, backend):
    n = x.shape[0]
    return x.new_empty((n,), dtype=torch.int64), x.new_empty((n,), dtype=torch.int64)


@torch.library.custom_op(f"{_NS}::subtract_rows", mutates_args=())
def subtract_rows(dst: Tensor, idx_a: Tensor, src_a: Tensor, idx_b: Tensor, src_b: Tensor,
                  backend: str) -> Tensor:
    """A copy of dst (N, D) with src_a[r] subtracted from row idx_a[r], then src_b[r] from
    row idx_b[r], in row order (deterministic): idx (K,) int64, src (K, D)."""
    out = dst.clone()
    add = getattr(engine(backend), "add_rows", None)
    for idx, src in ((idx_a, src_a), (idx_b, src_b)):
        if add is not None:
            add(out, idx, src.neg().contiguous())
        else:
            out.index_add_(0, idx, src, alpha=-1)
    return out


@subtract_rows.register_fake
def _(dst, idx_a, src_a, idx_b, src_b, backend):
    return torch.empty_like(dst)


# ---------------------------------------------------------------------------------------
# Distance strips: the batch-all and semi-hard triplet epilogues (losses/triplet_strips.py).
# ---------------------------------------------------------------------------------------
@torch.library.custom_op(f"{_NS}::distance_strip", mutates_args=())
def distance_strip(x: Tensor, sq: Tensor, row0: int, rows: int, backend: str) -> Tensor:
    """(rows, N) squared distances of rows [row0, row0 + rows) of x (N, D) to every row:
    x prepared (float32/float64, contiguous), sq (N,) its squared norms. No gradient: the
    strips' consumers form their own."""
    _check_width(x, "x")
    return engine(backend).distance_strip(x, sq, row0, rows)


@distance_strip.register_fake
def _(x, sq, row0, rows, backend):
    return x.new_empty((rows, x.shape[0]))
