"""lightly drop-ins whose loss runs on the tiled engine.

    from contrastive_kernels.integrations.lightly import NTXentLoss   # was: lightly.loss

Each class subclasses lightly's own (1.6), so the constructor, its defaults and
validation errors, the memory bank (lightly's ``MemoryBankModule`` at ``memory_bank``,
with ``memory_bank.bank`` / ``memory_bank.bank_ptr`` and lightly's update order: the
negatives are the bank before this batch, then the batch's normalized ``out1`` is
enqueued when ``out0`` requires a gradient) are theirs; ``forward(out0, out1)`` calls
:func:`contrastive_kernels.nt_xent_loss` / :func:`contrastive_kernels.info_nce`, which
never hold the (2N, 2N) or (N, K) similarity matrix. ``gather_distributed=True`` uses this
library's gathered distributed mode on the default process group. An extra keyword,
``backend``, picks the kernel backend (default "auto").

lightly is imported when this module is; ``import contrastive_kernels`` never imports it
(``pip install contrastive_kernels[lightly]``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as torch_F

try:
    from lightly import loss as _lightly_loss
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("contrastive_kernels.integrations.lightly needs lightly>=1.6: "
                      "pip install 'contrastive_kernels[lightly]'") from exc

from .. import functional as F

__all__ = ["NTXentLoss", "DCLLoss", "DCLWLoss"]


def _gather_group(gather_distributed: bool):
    """The default group when lightly would gather (more than one process), else None."""
    dist = torch.distributed
    if gather_distributed and dist.is_available() and dist.is_initialized() \
            and dist.get_world_size() > 1:
        return dist.group.WORLD
    return None


class NTXentLoss(_lightly_loss.NTXentLoss):
    """lightly's NTXentLoss (same arguments, same memory bank) on the tiled engine."""

    def __init__(self, temperature: float = 0.5, memory_bank_size=0,
                 gather_distributed: bool = False, backend: str = "auto"):
        super().__init__(temperature=temperature, memory_bank_size=memory_bank_size,
                         gather_distributed=gather_distributed)
        self.backend = backend

    def forward(self, out0: torch.Tensor, out1: torch.Tensor) -> torch.Tensor:
        """out0, out1 (N, D): two views. Without a bank: NT-Xent over both views (mean of
        2N rows); with a bank: each out0 row against its out1 row and the K bank rows
        (mean of N rows)."""
        if self.memory_bank.size[0] == 0:
            return F.nt_xent_loss(out0, out1, self.temperature, backend=self.backend,
                                  group=_gather_group(self.gather_distributed))
        # lightly's bank stores normalized rows, so it gets the normalized batch.
        _, negatives = self.memory_bank(torch_F.normalize(out1, dim=1),
                                        update=out0.requires_grad)
        bank = negatives.to(device=out0.device, dtype=out0.dtype)
        bank = bank.T if self.memory_bank.feature_dim_first else bank
        return F.info_nce(out0, out1, bank, self.temperature, backend=self.backend)


class DCLLoss(_lightly_loss.DCLLoss):
    """lightly's DCLLoss (decoupled contrastive learning: the positive left out of the
    denominator) on the tiled engine; ``weight_fn(out0, out1)`` weights the positives."""

    def __init__(self, temperature: float = 0.1, weight_fn=None,
                 gather_distributed: bool = False, backend: str = "auto"):
        super().__init__(temperature=temperature, weight_fn=weight_fn,
                         gather_distributed=gather_distributed)
        self.backend = backend

    def forward(self, out0: torch.Tensor, out1: torch.Tensor) -> torch.Tensor:
        """out0, out1 (N, D): ½(mean over out0's rows + mean over out1's rows)."""
        weight = None
        if self.weight_fn is not None:
            # lightly weights the positives with weight_fn(out0, out1) for out0's rows and
            # weight_fn(out1, out0) for out1's, on normalized features.
            n0, n1 = torch_F.normalize(out0, dim=1), torch_F.normalize(out1, dim=1)
            weight = torch.cat([torch.as_tensor(self.weight_fn(n0, n1)),
                                torch.as_tensor(self.weight_fn(n1, n0))]).to(out0.device)
        return F.nt_xent_loss(out0, out1, self.temperature, decoupled=True,
                              positive_weight=weight, backend=self.backend,
                              group=_gather_group(self.gather_distributed))


class DCLWLoss(DCLLoss, _lightly_loss.DCLWLoss):
    """lightly's DCLWLoss (DCL with negative von Mises-Fisher positive weights, width
    ``sigma``) on the tiled engine."""

    def __init__(self, temperature: float = 0.1, sigma: float = 0.5,
                 gather_distributed: bool = False, backend: str = "auto"):
        _lightly_loss.DCLWLoss.__init__(self, temperature=temperature, sigma=sigma,
                                        gather_distributed=gather_distributed)
        self.backend = backend
