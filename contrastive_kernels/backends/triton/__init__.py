"""The Triton backend: both tiled engines' kernels and launchers, one module per engine.

- ``tiles.py``: what the engines share (tile-loading helpers, tile configuration, output
  buffers, launch dtypes and precision);
- ``norms.py``: the row-wise kernels (inverse norms, normalization backward);
- ``softmax.py``: the softmax engine (row/column log-sum-exp forward, recomputing backward);
- ``pairwise.py``: the pairwise engine (SigLIP, Hadsell) and batch-hard mining.

This package is the engine module ``dispatch`` hands to the losses for ``backend="triton"``:
it exposes the interface of ``engines/softmax.py`` and ``engines/pairwise.py``.
"""
from .norms import inverse_norms
from .pairwise import hardest_pairs, pair_backward, pair_forward
from .softmax import backward, forward

__all__ = ["inverse_norms", "forward", "backward", "pair_forward", "pair_backward",
           "hardest_pairs"]
