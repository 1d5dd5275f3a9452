"""`nn.Module` forms of the distributed losses: the single-process modules with a strategy and a group.
A learnable temperature is a parameter of the module; register the module inside the DDP-wrapped model
(or average its gradient over ranks) so that its gradient follows the package's convention."""

from __future__ import annotations

import torch.distributed as dist
from torch import Tensor

from .. import nn
from ..functional import ContrastiveOutput
from . import losses


class InfoNCELoss(nn.InfoNCELoss):
    """`distributed.info_nce` as a module; see `dcr_kernels.nn.InfoNCELoss` for the other arguments."""

    def __init__(self, *args, strategy: str = "gather", group: dist.ProcessGroup | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.strategy, self.group = strategy, group

    def forward(
        self,
        query: Tensor,
        key: Tensor | None = None,
        positive: Tensor | None = None,
        weight: Tensor | None = None,
        return_metrics: bool = False,
    ) -> Tensor | ContrastiveOutput:
        return losses.info_nce(
            query,
            key,
            positive=positive,
            temperature=self.temperature,
            normalize=self.normalize,
            symmetric=self.symmetric,
            weight=weight,
            reduction=self.reduction,
            strategy=self.strategy,
            group=self.group,
            backend=self.backend,
            return_metrics=return_metrics,
        )


class SupConLoss(nn.SupConLoss):
    """`distributed.supcon_loss` as a module; see `dcr_kernels.nn.SupConLoss` for the other arguments."""

    def __init__(self, *args, strategy: str = "gather", group: dist.ProcessGroup | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.strategy, self.group = strategy, group

    def forward(
        self,
        embeddings: Tensor,
        labels: Tensor,
        key: Tensor | None = None,
        key_labels: Tensor | None = None,
        weight: Tensor | None = None,
        return_metrics: bool = False,
    ) -> Tensor | ContrastiveOutput:
        return losses.supcon_loss(
            embeddings,
            labels,
            key,
            key_labels,
            temperature=self.temperature,
            normalize=self.normalize,
            weight=weight,
            reduction=self.reduction,
            strategy=self.strategy,
            group=self.group,
            backend=self.backend,
            return_metrics=return_metrics,
        )


class CircleLoss(nn.CircleLoss):
    """`distributed.circle_loss` as a module; see `dcr_kernels.nn.CircleLoss` for the other arguments."""

    def __init__(self, *args, strategy: str = "gather", group: dist.ProcessGroup | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.strategy, self.group = strategy, group

    def forward(
        self,
        embeddings: Tensor,
        labels: Tensor,
        key: Tensor | None = None,
        key_labels: Tensor | None = None,
        weight: Tensor | None = None,
        return_metrics: bool = False,
    ) -> Tensor | ContrastiveOutput:
        return losses.circle_loss(
            embeddings,
            labels,
            key,
            key_labels,
            margin=self.margin,
            gamma=self.gamma,
            normalize=self.normalize,
            weight=weight,
            reduction=self.reduction,
            strategy=self.strategy,
            group=self.group,
            backend=self.backend,
            return_metrics=return_metrics,
        )
