"""Standard problem instances of every engine loss, shared by the main job (`check`) and
the benchmarks, so both measure the same thing."""
from __future__ import annotations

from typing import Callable

import torch

from . import functional as F

ENGINE_LOSSES = ("info_nce", "info_nce_bank", "nt_xent_loss", "clip_loss",
                 "simcse_unsup_loss", "simcse_sup_loss", "supcon_loss", "n_pair_loss",
                 "siglip_loss", "triplet_margin_loss", "contrastive_loss")


def make_problem(loss: str, n: int, d: int, dtype: torch.dtype, device,
                 seed: int = 0) -> tuple[Callable[[str], torch.Tensor], list[torch.Tensor]]:
    """(run, leaves): run(backend) computes the loss of an N-row problem with width D on
    fresh random leaves (requires_grad) of ``dtype``; leaves are the tensors to
    differentiate. For losses over pairs/triplets, N counts the anchor rows."""
    gen = torch.Generator().manual_seed(seed)

    def leaf(rows, scale=1.0):
        x = torch.randn((rows, d), generator=gen, dtype=torch.float64) * scale
        return x.to(device=device, dtype=dtype).requires_grad_()

    labels = torch.randint(0, max(1, n // 4), (n,), generator=gen).to(device)
    builders = {
        "info_nce": lambda: ([leaf(n), leaf(n)],
                             lambda x, y, b: F.info_nce(x, y, backend=b)),
        "info_nce_bank": lambda: ([leaf(n), leaf(n), leaf(4 * n)],
                                  lambda x, y, z, b: F.info_nce(x, y, z, backend=b)),
        "nt_xent_loss": lambda: ([leaf(n // 2 or 1), leaf(n // 2 or 1)],
                                 lambda x, y, b: F.nt_xent_loss(x, y, backend=b)),
        "clip_loss": lambda: ([leaf(n), leaf(n)],
                              lambda x, y, b: F.clip_loss(x, y, 20.0, normalize=True,
                                                          backend=b)),
        "simcse_unsup_loss": lambda: ([leaf(2 * max(1, n // 2))],
                                      lambda x, b: F.simcse_unsup_loss(x, backend=b)),
        "simcse_sup_loss": lambda: ([leaf(3 * n)],
                                    lambda x, b: F.simcse_sup_loss(x, backend=b)),
        "supcon_loss": lambda: ([leaf(n)],
                                lambda x, b: F.supcon_loss(x, labels, 0.1, normalize=True,
                                                           backend=b)),
        "n_pair_loss": lambda: ([leaf(n, d ** -0.5), leaf(n)],
                                lambda x, y, b: F.n_pair_loss(x, y, backend=b)),
        # open_clip's SigLIP initialization: logit_scale 10, logit_bias -10.
        "siglip_loss": lambda: ([leaf(n), leaf(n)],
                                lambda x, y, b: F.siglip_loss(x, y, 10.0, -10.0, normalize=True,
                                                              backend=b)),
        # Unit-scale rows (distances about sqrt(2)) so the margins are active.
        "triplet_margin_loss": lambda: ([leaf(n, d ** -0.5)],
                                        lambda x, b: F.triplet_margin_loss(x, labels, 0.2,
                                                                           backend=b)),
        "contrastive_loss": lambda: ([leaf(max(n, 2), d ** -0.5)],
                                     lambda x, b: F.contrastive_loss(
                                         x, labels if n >= 2 else torch.zeros(2, dtype=torch.long,
                                                                              device=device),
                                         1.5, backend=b)),
    }
    leaves, fn = builders[loss]()
    return (lambda backend: fn(*leaves, backend)), leaves
