"""Small helpers shared by the per-loss op modules."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..reference import reduce_rows  # noqa: F401  (one reduction rule for every backend)


def acc_dtype(x: torch.Tensor) -> torch.dtype:
    """fp64 for fp64 inputs, else fp32: the dtype losses are returned in."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def as_tensor(value, like: torch.Tensor) -> torch.Tensor:
    """A Python number or 0-dim tensor as a 0-dim tensor in like's accumulation dtype.

    Tensors keep their autograd graph, so a learnable temperature gets its gradient.
    """
    if isinstance(value, torch.Tensor):
        return value.to(device=like.device, dtype=acc_dtype(like))
    return torch.tensor(float(value), dtype=acc_dtype(like), device=like.device)


def inverse_temperature(temperature, like: torch.Tensor) -> torch.Tensor:
    return 1.0 / as_tensor(temperature, like)


def arange(n: int, like: torch.Tensor) -> torch.Tensor:
    return torch.arange(n, device=like.device, dtype=torch.int64)


def row_dot(a: torch.Tensor, b: torch.Tensor, normalize: bool) -> torch.Tensor:
    """⟨â_i, b̂_i⟩ per row (N,), O(N·D), in the accumulation dtype."""
    a = a.to(acc_dtype(a))
    b = b.to(acc_dtype(b))
    if normalize:
        a = F.normalize(a, dim=-1, eps=1e-12)
        b = F.normalize(b, dim=-1, eps=1e-12)
    return (a * b).sum(-1)
