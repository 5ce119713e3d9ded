"""The C++ CPU engine (csrc/cpu): launch parameters and the engine interface.

Implements ``inverse_norms``/``forward``/``backward`` with the signatures of
``engines/softmax.py`` on top of the ``contrastive_kernels._C_cpu`` extension. The tile
sizes are chosen here, never in C++: a bm×bn tile of logits per thread is the only
similarity-shaped storage, so memory stays O((N+M)·D + threads·(bm·bn + M)) at any N.
"""
from __future__ import annotations

import torch

from .. import _C_cpu as _ext

# (block_m, block_n) per accumulation dtype: a 256×256 fp32 tile (256 KiB; the backward
# holds two) stays in a core's L2 while its exp/max/sum work runs, and 256×256×D products
# keep the BLAS near its large-matrix speed (measured: same GFLOP/s as one N×N product,
# single-threaded). Smaller tiles cost repacking of the K̂ blocks; larger ones fall out of
# L2. fp64 halves the columns to keep the same bytes. Swept with benchmarks/cpu_targets.py
# --sweep on the 2-core dev machine.
_TILES = {torch.float32: (256, 256), torch.float64: (256, 128)}


# The backward keeps one dK̂ partial (M×D) per extra thread while all of them together stay
# under this many elements (256 MiB of fp32); beyond it, dK̂ comes from a second pass over
# column blocks (one more tile product, no partials).
MAX_PARTIAL_ELEMENTS = 1 << 26


def tile_config(dtype: torch.dtype) -> tuple[int, int]:
    """(block_m, block_n) for input dtype (half inputs run in fp32)."""
    return _TILES[torch.float64 if dtype == torch.float64 else torch.float32]


def inverse_norms(x: torch.Tensor, normalize: bool) -> torch.Tensor:
    """r (N,) in the accumulation dtype: 1/max(||x_i||, eps), or ones when not normalizing."""
    return _ext.inverse_norms(x, normalize)


def forward(q, k, rq, rk, scale, row_key, col_key, extra, mask_diag: bool, need_col: bool,
            xmul=None):
    """q (N,D), k (M,D) contiguous; rq (N,), rk (M,) and scale 0-dim in the accumulation
    dtype; row_key (N,), col_key (M,) int64; extra (N,) or None; xmul (T,) or None, 1 ≤ T ≤ 2,
    the multipliers of the extra log-sum-exps over each row's negatives (valid candidates
    whose key differs from the row's; the extra logit does not join them).

    Returns (lse (N,), pos (N,), clse (M,) or (0,), xlse (T, N)) in the accumulation dtype,
    xlse[t, i] = log Σ_{j negative} exp(xmul[t]·S_ij) (-inf where row i has no negative),
    (0, N) when xmul is None."""
    bm, bn = tile_config(q.dtype)
    return tuple(_ext.forward(q, k, rq, rk, scale, row_key, col_key, extra, mask_diag,
                              need_col, bm, bn, xmul))


def backward(q, k, rq, rk, scale, row_key, col_key, lse, clse, g_lse, g_pos, g_clse,
             mask_diag: bool, normalize: bool, deterministic: bool,
             need_dq: bool = True, need_dk: bool = True, xmul=None, xlse=None, g_xlse=None):
    """Inputs as forward's, plus lse (N,), clse (M,) or (0,), and their upstream gradients
    g_lse (N,), g_pos (N,), g_clse (M,) (or (0,) without clse); with the extra log-sum-exps,
    xmul (T,), forward's xlse (T, N) and its upstream gradient g_xlse (T, N) (None, or (0, N)
    tensors, without them).

    Returns dq (N,D), dk (M,D) in the input dtype ((0, D) where not needed), dscale 0-dim.
    Every CPU path is bitwise reproducible for a fixed torch.get_num_threads(), so
    ``deterministic`` changes nothing. The C++ pass computes both gradients."""
    bm, bn = tile_config(q.dtype)
    dq, dk, dscale = _ext.backward(q, k, rq, rk, scale, row_key, col_key, lse, clse, g_lse,
                                   g_pos, g_clse, mask_diag, normalize, deterministic, bm, bn,
                                   MAX_PARTIAL_ELEMENTS, xmul, xlse, g_xlse)
    return (dq if need_dq else dq[:0]), (dk if need_dk else dk[:0]), dscale


# ----------------------------------------------------------------------------------------
# The pairwise engine (engines/pairwise.py): same tiles, a per-pair epilogue.
# ----------------------------------------------------------------------------------------
def pair_forward(kind, q, k, rq, rk, params, row_key, col_key, mask_diag: bool):
    """rows (N,): Σ_j of the pair terms of row i (see engines/pairwise.py)."""
    bm, bn = tile_config(q.dtype)
    return _ext.pair_forward(kind, q, k, rq, rk, params, row_key, col_key, mask_diag, bm, bn)


def pair_backward(kind, q, k, rq, rk, params, row_key, col_key, g_row, mask_diag: bool,
                  normalize: bool, want_rows: bool, deterministic: bool,
                  need_dq: bool = True, need_dk: bool = True):
    """(rows (N,) or empty, dq (N,D), dk (M,D) ((0, D) where not needed), dparams (3,));
    one pass of 3 tile products. Bitwise reproducible for a fixed thread count, so
    ``deterministic`` changes nothing. The C++ pass computes both gradients."""
    bm, bn = tile_config(q.dtype)
    rows, dq, dk, dparams = _ext.pair_backward(kind, q, k, rq, rk, params, row_key, col_key,
                                               g_row, mask_diag, normalize, want_rows, bm, bn,
                                               MAX_PARTIAL_ELEMENTS)
    return rows, (dq if need_dq else dq[:0]), (dk if need_dk else dk[:0]), dparams


def hardest_pairs(x, rx, key):
    """(pos (N,), neg (N,)) int64: per row the farthest same-key row (j ≠ i) and the
    nearest other-key row, lowest index on ties, -1 where there is none."""
    bm, bn = tile_config(x.dtype)
    return tuple(_ext.hardest_pairs(x, rx, key, bm, bn))


def add_rows(dst, idx, src):
    """dst[idx[r]] += src[r] in row order, in place: dst (N, D), idx (K,) int64, src (K, D)
    contiguous, fp32/fp64 (the triplet backward's scatter; deterministic)."""
    _ext.add_rows(dst, idx, src)


def distance_strip(x, sq, row0: int, rows: int):
    """(rows, N) squared distances of rows [row0, row0 + rows) of x (N, D) to every row:
    x prepared (fp32/fp64, contiguous), sq (N,) its squared norms; near-coincident pairs
    recomputed from the difference."""
    return _ext.distance_strip(x, sq, row0, rows, tile_config(x.dtype)[1])
