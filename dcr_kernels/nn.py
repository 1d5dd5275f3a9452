"""`nn.Module` forms of the losses. A learnable temperature lives here, log-parametrised and clamped
as CLIP does: the module holds log(1/temperature), and the scale exp(.) is clamped to `max_scale`."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from . import functional as F


class _Temperature(nn.Module):
    """A fixed temperature, or a learnable one stored as log_scale = log(1 / temperature)."""

    def __init__(self, temperature: float, learnable: bool, max_scale: float):
        super().__init__()
        if not (math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"temperature must be finite and > 0, got {temperature}")
        if max_scale <= 0:
            raise ValueError(f"max_scale must be > 0, got {max_scale}")
        self.max_scale = float(max_scale)
        log_scale = torch.tensor(math.log(1.0 / temperature))
        if learnable:
            self.log_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("log_scale", log_scale)

    def temperature(self) -> Tensor:
        return torch.exp(-self.log_scale.clamp(max=math.log(self.max_scale)))


class InfoNCELoss(nn.Module):
    """`functional.info_nce` as a module; `learnable_temperature=True` makes the temperature a parameter."""

    def __init__(
        self,
        temperature: float = 0.07,
        *,
        learnable_temperature: bool = False,
        max_scale: float = 100.0,
        normalize: bool = True,
        symmetric: bool = False,
        reduction: str = "mean",
        backend: str = "auto",
    ):
        super().__init__()
        self.temp = _Temperature(temperature, learnable_temperature, max_scale)
        self.normalize, self.symmetric, self.reduction, self.backend = (
            normalize,
            symmetric,
            reduction,
            backend,
        )

    @property
    def temperature(self) -> Tensor:
        return self.temp.temperature()

    def forward(
        self,
        query: Tensor,
        key: Tensor | None = None,
        positive: Tensor | None = None,
        weight: Tensor | None = None,
        return_metrics: bool = False,
    ) -> Tensor | F.ContrastiveOutput:
        return F.info_nce(
            query,
            key,
            positive=positive,
            temperature=self.temperature,
            normalize=self.normalize,
            symmetric=self.symmetric,
            weight=weight,
            reduction=self.reduction,
            backend=self.backend,
            return_metrics=return_metrics,
        )


class SupConLoss(nn.Module):
    """`functional.supcon_loss` as a module; `learnable_temperature=True` makes the temperature a parameter."""

    def __init__(
        self,
        temperature: float = 0.1,
        *,
        learnable_temperature: bool = False,
        max_scale: float = 100.0,
        normalize: bool = True,
        reduction: str = "mean",
        backend: str = "auto",
    ):
        super().__init__()
        self.temp = _Temperature(temperature, learnable_temperature, max_scale)
        self.normalize, self.reduction, self.backend = normalize, reduction, backend

    @property
    def temperature(self) -> Tensor:
        return self.temp.temperature()

    def forward(
        self,
        embeddings: Tensor,
        labels: Tensor,
        key: Tensor | None = None,
        key_labels: Tensor | None = None,
        weight: Tensor | None = None,
        return_metrics: bool = False,
    ) -> Tensor | F.ContrastiveOutput:
        return F.supcon_loss(
            embeddings,
            labels,
            key,
            key_labels,
            temperature=self.temperature,
            normalize=self.normalize,
            weight=weight,
            reduction=self.reduction,
            backend=self.backend,
            return_metrics=return_metrics,
        )


class CircleLoss(nn.Module):
    """`functional.circle_loss` as a module (margin m, scale gamma)."""

    def __init__(
        self,
        margin: float = 0.4,
        gamma: float = 80.0,
        *,
        normalize: bool = True,
        reduction: str = "mean",
        backend: str = "auto",
    ):
        super().__init__()
        self.margin, self.gamma = margin, gamma
        self.normalize, self.reduction, self.backend = normalize, reduction, backend

    def forward(
        self,
        embeddings: Tensor,
        labels: Tensor,
        key: Tensor | None = None,
        key_labels: Tensor | None = None,
        weight: Tensor | None = None,
        return_metrics: bool = False,
    ) -> Tensor | F.ContrastiveOutput:
        return F.circle_loss(
            embeddings,
            labels,
            key,
            key_labels,
            margin=self.margin,
            gamma=self.gamma,
            normalize=self.normalize,
            weight=weight,
            reduction=self.reduction,
            backend=self.backend,
            return_metrics=return_metrics,
        )
