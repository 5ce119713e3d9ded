"""The Triton backend: both tiled engines' kernels and launchers, one module per engine.

- ``tiles.py``: what the engines share (tile-loading helpers, NaN-propagating maxima, tile
  configuration, output buffers, launch dtypes and precision);
- ``norms.py``: the row-wise kernels (inverse norms, normalization backward);
- ``softmax.py``: the softmax engine (row/column log-sum-exp forward, recomputing backward);
- ``pairwise.py``: the pairwise engine (SigLIP, Hadsell) and batch-hard mining.

This package is the engine module ``dispatch`` hands to the losses for ``backend="triton"``:
it exposes the interface of ``engines/softmax.py`` and ``engines/pairwise.py``. A Triton
launch goes to the *current* CUDA device and its current stream, not to the device of its
arguments; every entry point therefore runs under a guard that makes the inputs' device
current (as the CUDA C++ bindings do with ``CUDAGuard``), so a ``cuda:1`` tensor runs on
GPU 1, on GPU 1's current stream, whatever device the caller has selected.
"""
from __future__ import annotations

import functools
from types import ModuleType

import torch

from . import norms, pairwise, softmax

__all__ = ["inverse_norms", "forward", "backward", "pair_forward", "pair_backward",
           "hardest_pairs", "distance_strip"]


def _device_of(args) -> torch.device | None:
    """The device of the first tensor argument (entry points put one among their first
    two arguments: ``pair_*`` take the kind first)."""
    for value in args:
        device = getattr(value, "device", None)
        if isinstance(device, torch.device):
            return device
    return None


def _on_inputs_device(module: ModuleType, name: str):
    """``module.name`` run with its inputs' CUDA device current (looked up at call time)."""
    @functools.wraps(getattr(module, name))
    def entry(*args, **kwargs):
        device = _device_of(args)
        run = getattr(module, name)
        if device is None or device.type != "cuda":
            return run(*args, **kwargs)
        with torch.cuda.device(device):
            return run(*args, **kwargs)
    return entry


inverse_norms = _on_inputs_device(norms, "inverse_norms")
forward = _on_inputs_device(softmax, "forward")
backward = _on_inputs_device(softmax, "backward")
pair_forward = _on_inputs_device(pairwise, "pair_forward")
pair_backward = _on_inputs_device(pairwise, "pair_backward")
hardest_pairs = _on_inputs_device(pairwise, "hardest_pairs")
distance_strip = _on_inputs_device(pairwise, "distance_strip")
