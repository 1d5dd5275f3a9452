"""Fused contrastive losses (InfoNCE, supervised contrastive, Circle) that never materialise the
B x N similarity matrix: Triton kernels on CUDA, a row-chunked PyTorch backend elsewhere."""

from .functional import ContrastiveOutput, circle_loss, info_nce, supcon_loss
from .nn import CircleLoss, InfoNCELoss, SupConLoss

__all__ = [
    "CircleLoss",
    "ContrastiveOutput",
    "InfoNCELoss",
    "SupConLoss",
    "circle_loss",
    "info_nce",
    "supcon_loss",
]
__version__ = "0.1.0"
