"""contrastive_kernels: fused, tiled contrastive losses that never build the N×N matrix."""
from .dispatch import BackendUnavailableError, backend_info
from .gradcache import GradCache
from .functional import (clip_loss, contrastive_loss, info_nce, multiple_negatives_ranking_loss,
                         n_pair_loss, nt_xent_loss,
                         siglip_loss, simcse_sup_loss, simcse_unsup_loss, supcon_loss,
                         triplet_margin_loss)
from .modules import (ClipLoss, ContrastiveLoss, InfoNCELoss, MultipleNegativesRankingLoss,
                      NPairLoss, NTXentLoss,
                      SigLipLoss, SimCSESupLoss, SimCSEUnsupLoss, SupConLoss,
                      TripletMarginLoss)

__version__ = "0.1.0"

__all__ = [
    "backend_info", "BackendUnavailableError", "GradCache",
    "info_nce", "nt_xent_loss", "clip_loss", "siglip_loss", "simcse_unsup_loss",
    "simcse_sup_loss", "supcon_loss", "n_pair_loss", "triplet_margin_loss",
    "contrastive_loss", "multiple_negatives_ranking_loss",
    "InfoNCELoss", "NTXentLoss", "ClipLoss", "SigLipLoss", "SimCSEUnsupLoss",
    "SimCSESupLoss", "SupConLoss", "NPairLoss", "TripletMarginLoss", "ContrastiveLoss",
    "MultipleNegativesRankingLoss",
]
