"""Standard problem instances of every engine loss, shared by the main job (`check`) and
the benchmarks, so both measure the same thing."""
from __future__ import annotations

from typing import Callable

import torch

from . import functional as F

ENGINE_LOSSES = ("info_nce", "info_nce_bank", "nt_xent_loss", "clip_loss",
                 "simcse_unsup_loss", "simcse_sup_loss", "supcon_loss", "n_pair_loss",
                 "siglip_loss", "triplet_margin_loss", "contrastive_loss",
                 "multiple_negatives_ranking_loss")


# The loss parameters of every problem, read by the benchmarks' peer adapters so that a
# peer library computes the same instance.
PARAMS = {"info_nce": {"temperature": 0.1}, "info_nce_bank": {"temperature": 0.1},
          "nt_xent_loss": {"temperature": 0.1},
          "clip_loss": {"logit_scale": 20.0},
          "siglip_loss": {"logit_scale": 10.0, "logit_bias": -10.0},
          "simcse_unsup_loss": {"lamda": 0.05}, "simcse_sup_loss": {"lamda": 0.05},
          "supcon_loss": {"temperature": 0.1, "base_temperature": 0.07},
          "triplet_margin_loss": {"margin": 0.2}, "contrastive_loss": {"margin": 1.5},
          "multiple_negatives_ranking_loss": {"scale": 20.0,
                                              "directions": ("query_to_doc", "query_to_query")}}


def problem_labels(loss: str, n: int, device, seed: int = 0) -> torch.Tensor:
    """The (N,) int64 class labels of the labelled problems (about 4 rows per class; for
    contrastive_loss at least 2 rows), drawn from their own generator."""
    rows = max(n, 2) if loss == "contrastive_loss" else n
    gen = torch.Generator().manual_seed(seed + 1)
    return torch.randint(0, max(1, rows // 4), (rows,), generator=gen).to(device)


def make_problem(loss: str, n: int, d: int, dtype: torch.dtype, device,
                 seed: int = 0) -> tuple[Callable[[str], torch.Tensor], list[torch.Tensor]]:
    """(run, leaves): run(backend) computes the loss of an N-row problem with width D on
    fresh random leaves (requires_grad) of ``dtype``; leaves are the tensors to
    differentiate. For losses over pairs/triplets, N counts the anchor rows. The labels are
    ``problem_labels(loss, n, device, seed)``, the parameters ``PARAMS[loss]``."""
    gen = torch.Generator().manual_seed(seed)

    def leaf(rows, scale=1.0):
        x = torch.randn((rows, d), generator=gen, dtype=torch.float64) * scale
        return x.to(device=device, dtype=dtype).requires_grad_()

    labels = problem_labels(loss, n, device, seed)
    p = PARAMS.get(loss, {})
    builders = {
        "info_nce": lambda: ([leaf(n), leaf(n)],
                             lambda x, y, b: F.info_nce(x, y, backend=b, **p)),
        "info_nce_bank": lambda: ([leaf(n), leaf(n), leaf(4 * n)],
                                  lambda x, y, z, b: F.info_nce(x, y, z, backend=b, **p)),
        "nt_xent_loss": lambda: ([leaf(n // 2 or 1), leaf(n // 2 or 1)],
                                 lambda x, y, b: F.nt_xent_loss(x, y, backend=b, **p)),
        "clip_loss": lambda: ([leaf(n), leaf(n)],
                              lambda x, y, b: F.clip_loss(x, y, normalize=True, backend=b,
                                                          **p)),
        "simcse_unsup_loss": lambda: ([leaf(2 * max(1, n // 2))],
                                      lambda x, b: F.simcse_unsup_loss(x, backend=b, **p)),
        "simcse_sup_loss": lambda: ([leaf(3 * n)],
                                    lambda x, b: F.simcse_sup_loss(x, backend=b, **p)),
        "supcon_loss": lambda: ([leaf(n)],
                                lambda x, b: F.supcon_loss(x, labels, normalize=True,
                                                           backend=b, **p)),
        "n_pair_loss": lambda: ([leaf(n, d ** -0.5), leaf(n)],
                                lambda x, y, b: F.n_pair_loss(x, y, backend=b)),
        # open_clip's SigLIP initialization: logit_scale 10, logit_bias -10.
        "siglip_loss": lambda: ([leaf(n), leaf(n)],
                                lambda x, y, b: F.siglip_loss(x, y, normalize=True,
                                                              backend=b, **p)),
        # Unit-scale rows (distances about sqrt(2)) so the margins are active.
        "triplet_margin_loss": lambda: ([leaf(n, d ** -0.5)],
                                        lambda x, b: F.triplet_margin_loss(x, labels,
                                                                           backend=b, **p)),
        # Queries, positives and one hard-negative column; two candidate sets merged.
        "multiple_negatives_ranking_loss": lambda: (
            [leaf(n), leaf(n), leaf(n)],
            lambda q, d_, h, b: F.multiple_negatives_ranking_loss(q, d_, h, backend=b, **p)),
        "contrastive_loss": lambda: ([leaf(max(n, 2), d ** -0.5)],
                                     lambda x, b: F.contrastive_loss(
                                         x, labels, backend=b, **p)),
    }
    leaves, fn = builders[loss]()
    return (lambda backend: fn(*leaves, backend)), leaves
