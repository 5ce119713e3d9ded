"""SimCLR NT-Xent on the tiled engine: one self-similarity pass over cat(z1, z2)."""
from __future__ import annotations

import torch

from ._common import arange, inverse_temperature, reduce_rows
from ..engines.softmax import EngineOptions, softmax_engine


def nt_xent_loss(z1, z2, temperature, reduction, normalize, impl):
    """z1, z2 (N, D). Rows of z = cat(z1, z2) (2N, D) against all other rows, target
    (i + N) mod 2N. Returns the reduced loss ("none": (2N,), z1's rows first)."""
    z = torch.cat([z1, z2], dim=0)
    two_n = z.shape[0]
    cols = arange(two_n, z)
    targets = (cols + two_n // 2) % two_n
    lse, pos, _ = softmax_engine(z, z, inverse_temperature(temperature, z), impl=impl,
                                 row_key=targets, col_key=cols,
                                 opts=EngineOptions(mask_diag=True, normalize=normalize))
    return reduce_rows(lse - pos, reduction)
