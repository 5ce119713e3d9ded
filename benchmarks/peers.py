"""Peer libraries as benchmark providers, when they are installed (``pip install -e
".[peers]"``): open_clip, pytorch-metric-learning (PML), info-nce-pytorch, and Inf-CL (CUDA).

Each adapter computes the benchmark problem of ``contrastive_kernels.problems`` with the
peer's own loss, on the same leaves, labels and parameters. ``SAME`` says whether the peer
computes our loss exactly (tests/test_peers.py checks that it does) or, where its semantics
differ, how; a peer with different semantics is still timed, and labelled as such.
"""
from __future__ import annotations

import importlib.util
from typing import Callable

import torch
import torch.nn.functional as F

from contrastive_kernels.problems import PARAMS, problem_labels

# provider -> {loss: "same" | "differs: ..."}; the adapters below follow this table.
SAME = {
    "open_clip": {"clip_loss": "same", "siglip_loss": "same"},
    "info-nce-pytorch": {"info_nce": "same", "info_nce_bank": "same"},
    "pml": {
        "nt_xent_loss": "same",
        "supcon_loss": "differs: no temperature/base_temperature factor (PML SupConLoss)",
        "n_pair_loss": "same",
        "triplet_margin_loss": "same (TripletMarginLoss + BatchHardMiner, MeanReducer)",
        "contrastive_loss": "differs: hinges on d, not d² (PML ContrastiveLoss, "
                            "AvgNonZeroReducer)",
    },
    "inf-cl": {"clip_loss": "same"},
}
_MODULE = {"open_clip": "open_clip", "info-nce-pytorch": "info_nce",
           "pml": "pytorch_metric_learning", "inf-cl": "inf_cl"}


def installed(provider: str) -> bool:
    return importlib.util.find_spec(_MODULE[provider]) is not None


def peer_providers(loss: str, device: torch.device) -> list[str]:
    """The installed peers that have an adapter for ``loss`` on ``device`` (Inf-CL's Triton
    kernels need CUDA)."""
    return [p for p, losses in SAME.items() if loss in losses and installed(p)
            and (p != "inf-cl" or device.type == "cuda")]


def peer_call(provider: str, loss: str, leaves: list[torch.Tensor], n: int, device,
              seed: int = 0) -> Callable[[], torch.Tensor]:
    """A zero-argument callable computing ``loss`` with ``provider`` on the leaves of
    ``make_problem(loss, n, ..., seed=seed)`` (same labels and parameters)."""
    p = PARAMS.get(loss, {})
    if provider == "open_clip":
        return _open_clip(loss, leaves, p)
    if provider == "info-nce-pytorch":
        from info_nce import info_nce
        return lambda: info_nce(*leaves, temperature=p["temperature"])
    if provider == "pml":
        return _pml(loss, leaves, problem_labels(loss, n, device, seed), p)
    if provider == "inf-cl":
        return _inf_cl(leaves, p)
    raise ValueError(f"unknown peer {provider!r}")


def _open_clip(loss, leaves, p):
    from open_clip.loss import ClipLoss, SigLipLoss
    x, y = leaves
    if loss == "clip_loss":
        # ClipLoss expects normalized features, as our problem's normalize=True gives.
        fn = ClipLoss()
        return lambda: fn(F.normalize(x, dim=-1), F.normalize(y, dim=-1), p["logit_scale"])
    fn = SigLipLoss()
    return lambda: fn(F.normalize(x, dim=-1), F.normalize(y, dim=-1), p["logit_scale"],
                      p["logit_bias"])


def _pml(loss, leaves, labels, p):
    from pytorch_metric_learning import distances, losses, miners, reducers
    if loss == "nt_xent_loss":
        z1, z2 = leaves
        fn = losses.NTXentLoss(temperature=p["temperature"])
        pair = torch.arange(z1.shape[0], device=z1.device).repeat(2)
        return lambda: fn(torch.cat([z1, z2]), pair)
    if loss == "supcon_loss":
        fn = losses.SupConLoss(temperature=p["temperature"])
        return lambda: fn(leaves[0], labels)
    if loss == "n_pair_loss":
        a, b = leaves
        fn = losses.NPairsLoss(distance=distances.DotProductSimilarity(
            normalize_embeddings=False))
        pair = torch.arange(a.shape[0], device=a.device).repeat(2)
        return lambda: fn(torch.cat([a, b]), pair)
    if loss == "triplet_margin_loss":
        lp = distances.LpDistance(normalize_embeddings=False)
        fn = losses.TripletMarginLoss(margin=p["margin"], distance=lp,
                                      reducer=reducers.MeanReducer())
        miner = miners.BatchHardMiner(distance=lp)
        return lambda: fn(leaves[0], labels, miner(leaves[0], labels))
    if loss == "contrastive_loss":
        fn = losses.ContrastiveLoss(pos_margin=0.0, neg_margin=p["margin"],
                                    distance=distances.LpDistance(normalize_embeddings=False))
        return lambda: fn(leaves[0], labels)
    raise ValueError(f"PML has no adapter for {loss!r}")


def _inf_cl(leaves, p):
    from inf_cl import cal_inf_loss
    x, y = leaves
    scale = torch.tensor(p["logit_scale"], device=x.device)

    def clip():
        xn, yn = F.normalize(x, dim=-1), F.normalize(y, dim=-1)
        return 0.5 * (cal_inf_loss(xn, yn, scale=scale) + cal_inf_loss(yn, xn, scale=scale))
    return clip
