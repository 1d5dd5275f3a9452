"""Fused contrastive losses (InfoNCE, supervised contrastive, Circle) that never materialise the
B x N similarity matrix: Triton kernels on CUDA, a row-chunked PyTorch backend elsewhere."""

from .functional import ContrastiveOutput, circle_loss, info_nce, sigmoid_loss, supcon_loss
from .nn import CircleLoss, InfoNCELoss, SupConLoss
from .precision import use_fp32_precision

__all__ = [
    "CircleLoss",
    "ContrastiveOutput",
    "InfoNCELoss",
    "SupConLoss",
    "circle_loss",
    "info_nce",
    "sigmoid_loss",
    "supcon_loss",
    "use_fp32_precision",
]
__version__ = "0.1.0"
