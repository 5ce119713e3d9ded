"""The distributed losses (SPEC §3 of the contract; docs in the README) and their
collectives.

- ``collectives.py``: the autograd all-gather (``dist_mode="gather"``) and the ring
  engines (``dist_mode="ring"``), plus the peer checks;
- ``losses.py``: the batch-wide losses on those collectives (``functional.py`` calls
  them when ``group=`` is given).
"""
from .collectives import (DIST_MODES, AllGatherRows, PeerError, RingPairwise, RingSoftmax,
                          all_gather_labels, all_gather_rows, rank_and_size, row_counts)

__all__ = ["DIST_MODES", "PeerError", "AllGatherRows", "RingSoftmax", "RingPairwise",
           "all_gather_rows", "all_gather_labels", "rank_and_size", "row_counts"]
