"""The CUDA C++ engine (csrc/cuda): launch parameters and the engine interface.

Implements ``inverse_norms``/``forward``/``backward`` with the signatures of
``engines/softmax.py``, and ``pair_forward``/``pair_backward``/``hardest_pairs`` of
``engines/pairwise.py``, on top of ``contrastive_kernels._C_cuda``. Tile shapes are
compile-time in the kernels (64×64 logit tiles, D in 32-wide chunks; 32×32 for fp64: see
csrc/cuda/softmax_engine_cuda.cu for why); the one launch parameter chosen here is the
number of persistent programs of the CLIP forward, whose column partials cost
[programs, M].

With ``CONTRASTIVE_KERNELS_CUDA_EMULATE=1`` the same interface runs
``contrastive_kernels._C_cuda_emu``: the same kernel sources compiled for the CPU emulation
of the CUDA execution model (csrc/emu), on CPU tensors. It exists to execute the kernels in
tests without a GPU; ``dispatch`` never picks it for "auto".
"""
from __future__ import annotations

import functools
import os

import torch

EMULATE_ENV = "CONTRASTIVE_KERNELS_CUDA_EMULATE"
EMULATED = os.environ.get(EMULATE_ENV) == "1"

if EMULATED:
    from .. import _C_cuda_emu as _ext
else:
    from .. import _C_cuda as _ext

# Persistent CLIP-forward programs under the emulator: a few, so that tests see programs
# owning several row blocks (as the Triton interpreter's 4).
_EMULATED_PROGRAMS = 3


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def column_programs(device: torch.device) -> int:
    """Persistent programs of a CLIP forward: two per SM fill the GPU; more would only
    grow the [programs, M] column partials. Under the emulator: a few, or with
    CONTRASTIVE_KERNELS_LAUNCH_AS those of the GPU it names (the emulated kernels then
    size every other part of the launch for that GPU too), so that counting measures the
    launch a GPU would get."""
    if device.type != "cuda":
        from .triton.launch import SM_COUNT, launch_as  # the one parser of LAUNCH_AS
        arch = launch_as()
        return 2 * SM_COUNT[arch] if arch else _EMULATED_PROGRAMS
    index = device.index if device.index is not None else torch.cuda.current_device()
    return 2 * _sm_count(index)


def inverse_norms(x: torch.Tensor, normalize: bool) -> torch.Tensor:
    """r (N,) in the accumulation dtype: 1/max(||x_i||, eps), or ones when not normalizing."""
    return _ext.inverse_norms(x, normalize)


def forward(q, k, rq, rk, scale, row_key, col_key, extra, mask_diag: bool, need_col: bool,
            xmul=None):
    """q (N,D), k (M,D) contiguous CUDA rows; rq (N,), rk (M,) and scale 0-dim in the
    accumulation dtype; row_key (N,), col_key (M,) int64; extra (N,) or None; xmul (T,) or
    None, 1 ≤ T ≤ 2, the multipliers of the extra log-sum-exps over each row's negatives
    (valid candidates whose key differs from the row's; the extra logit does not join them).

    Returns (lse (N,), pos (N,), clse (M,) or (0,), xlse (T, N)) in the accumulation dtype,
    xlse[t, i] = log Σ_{j negative} exp(xmul[t]·S_ij) (-inf where row i has no negative),
    (0, N) when xmul is None."""
    return tuple(_ext.forward(q, k, rq, rk, scale, row_key, col_key, extra, mask_diag,
                              need_col, column_programs(q.device), xmul))


def backward(q, k, rq, rk, scale, row_key, col_key, lse, clse, g_lse, g_pos, g_clse,
             mask_diag: bool, normalize: bool, deterministic: bool,
             need_dq: bool = True, need_dk: bool = True, xmul=None, xlse=None, g_xlse=None):
    """Inputs as forward's, plus lse (N,), clse (M,) or (0,), and their upstream gradients
    g_lse (N,), g_pos (N,), g_clse (M,) (or (0,) without clse); with the extra log-sum-exps,
    xmul (T,), forward's xlse (T, N) and its upstream gradient g_xlse (T, N) (None, or (0, N)
    tensors, without them).

    Returns dq (N,D), dk (M,D) in the input dtype ((0, D) where not needed: not computed),
    dscale 0-dim. deterministic=False: one pass, dK by atomics (8·N·M·D FLOPs with the
    forward); True: dQ and dK passes (10·N·M·D); a frozen key bank (need_dk=False): the
    logit recompute and dQ only (6·N·M·D with the forward)."""
    return tuple(_ext.backward(q, k, rq, rk, scale, row_key, col_key, lse, clse, g_lse,
                               g_pos, g_clse, mask_diag, normalize, deterministic, need_dq,
                               need_dk, xmul, xlse, g_xlse))


# --- the pairwise engine (engines/pairwise.py): SigLIP, Hadsell, batch-hard mining ----
def pair_forward(kind: int, q, k, rq, rk, params, row_key, col_key, mask_diag: bool):
    """rows (N,) in the accumulation dtype: Σ over the valid pairs of row i of the term of
    ``kind`` (0 SIGLIP, 1 HADSELL). params (3,) = [scale, bias, margin], read on the device."""
    return _ext.pair_forward(int(kind), q, k, rq, rk, params, row_key, col_key, mask_diag)


def pair_backward(kind: int, q, k, rq, rk, params, row_key, col_key, g_row, mask_diag: bool,
                  normalize: bool, want_rows: bool, deterministic: bool,
                  need_dq: bool = True, need_dk: bool = True):
    """(rows (N,) or empty unless want_rows, dq (N,D), dk (M,D) in the input dtype ((0, D)
    where not needed), dparams (3,) = [dscale, dbias, dmargin]). deterministic=False: one
    pass, dK̂ (and the Hadsell column sums) by atomics; True: an atomic-free row pass and a
    column pass, each recomputing the tiles, so reruns are bitwise identical. A frozen key
    side (need_dk=False) is the row pass without dK̂; the row pass always runs (it owns the
    row terms and the scalar gradients), so need_dq=False skips only dQ's normalization
    backward."""
    return tuple(_ext.pair_backward(int(kind), q, k, rq, rk, params, row_key, col_key, g_row,
                                    mask_diag, normalize, want_rows, deterministic, need_dq,
                                    need_dk))


def hardest_pairs(x, rx, key):
    """(pos (N,), neg (N,)) int64: per row the farthest other row with the same key and the
    nearest row with another key (lowest index on ties, NaN beats numbers, -1 if none)."""
    return tuple(_ext.hardest_pairs(x, rx, key))


def distance_strip(x, sq, row0: int, rows: int):
    """(rows, N) squared distances of rows [row0, row0 + rows) of x (N, D) to every row:
    x prepared (fp32/fp64, contiguous), sq (N,) its squared norms; near-coincident pairs
    recomputed from the difference."""
    return _ext.distance_strip(x, sq, row0, rows)
