"""`nn.Module` forms of the losses. A learnable temperature lives here, log-parametrised and clamped
as CLIP does: the module holds log(1/temperature), and the scale exp(.) is clamped to `max_scale`."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

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


class _Loss(nn.Module):
    """What the loss modules share: ``_functional`` is the loss function they call, ``_options`` the keyword
    arguments the module holds for it (a subclass adds its own, e.g. a strategy and a process group)."""

    _functional: Callable[..., Tensor | F.ContrastiveOutput]

    def __init__(self, *, normalize: bool, reduction: str, backend: str, check_inputs: bool = True):
        super().__init__()
        self.normalize, self.reduction, self.backend = normalize, reduction, backend
        self.check_inputs = check_inputs

    def _options(self) -> dict[str, Any]:
        return {
            "normalize": self.normalize,
            "reduction": self.reduction,
            "backend": self.backend,
            "check_inputs": self.check_inputs,
        }


class _LabelledLoss(_Loss):
    """A loss over labelled embeddings (positives = same label), against an optional labelled key set."""

    def forward(
        self,
        embeddings: Tensor,
        labels: Tensor,
        key: Tensor | None = None,
        key_labels: Tensor | None = None,
        weight: Tensor | None = None,
        return_metrics: bool = False,
    ) -> Tensor | F.ContrastiveOutput:
        return self._functional(
            embeddings, labels, key, key_labels, weight=weight, return_metrics=return_metrics, **self._options()
        )


class InfoNCELoss(_Loss):
    """`functional.info_nce` as a module; `learnable_temperature=True` makes the temperature a parameter."""

    _functional = staticmethod(F.info_nce)

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
        check_inputs: bool = True,
    ):
        super().__init__(normalize=normalize, reduction=reduction, backend=backend, check_inputs=check_inputs)
        self.temp = _Temperature(temperature, learnable_temperature, max_scale)
        self.symmetric = symmetric

    @property
    def temperature(self) -> Tensor:
        return self.temp.temperature()

    def _options(self) -> dict[str, Any]:
        return super()._options() | {"temperature": self.temperature, "symmetric": self.symmetric}

    def forward(
        self,
        query: Tensor,
        key: Tensor | None = None,
        positive: Tensor | None = None,
        weight: Tensor | None = None,
        return_metrics: bool = False,
    ) -> Tensor | F.ContrastiveOutput:
        return self._functional(
            query, key, positive=positive, weight=weight, return_metrics=return_metrics, **self._options()
        )


class SupConLoss(_LabelledLoss):
    """`functional.supcon_loss` as a module; `learnable_temperature=True` makes the temperature a parameter."""

    _functional = staticmethod(F.supcon_loss)

    def __init__(
        self,
        temperature: float = 0.1,
        *,
        learnable_temperature: bool = False,
        max_scale: float = 100.0,
        normalize: bool = True,
        reduction: str = "mean",
        backend: str = "auto",
        check_inputs: bool = True,
    ):
        super().__init__(normalize=normalize, reduction=reduction, backend=backend, check_inputs=check_inputs)
        self.temp = _Temperature(temperature, learnable_temperature, max_scale)

    @property
    def temperature(self) -> Tensor:
        return self.temp.temperature()

    def _options(self) -> dict[str, Any]:
        return super()._options() | {"temperature": self.temperature}


class CircleLoss(_LabelledLoss):
    """`functional.circle_loss` as a module (margin m, scale gamma)."""

    _functional = staticmethod(F.circle_loss)

    def __init__(
        self,
        margin: float = 0.4,
        gamma: float = 80.0,
        *,
        normalize: bool = True,
        reduction: str = "mean",
        backend: str = "auto",
        check_inputs: bool = True,
    ):
        super().__init__(normalize=normalize, reduction=reduction, backend=backend, check_inputs=check_inputs)
        self.margin, self.gamma = margin, gamma

    def _options(self) -> dict[str, Any]:
        return super()._options() | {"margin": self.margin, "gamma": self.gamma}
