"""The contrastive objective of the DCR stage: a class-label loss from `dcr_kernels` chosen by name."""

from __future__ import annotations

from collections.abc import Callable

import torch

from dcr_kernels import ContrastiveOutput, circle_loss, info_nce, supcon_loss

LOSSES = ("circle", "supcon", "infonce")
LossFn = Callable[[torch.Tensor, torch.Tensor], ContrastiveOutput]


def same_class_partner(labels: torch.Tensor) -> torch.Tensor:
    """For every row, the next row of its class in batch order (cyclic): InfoNCE's positive."""
    partner = torch.empty_like(labels)
    for cls in labels.unique():
        rows = (labels == cls).nonzero().flatten()
        if len(rows) < 2:
            raise ValueError(f"class {int(cls)} has a single row in the batch, so it has no positive")
        partner[rows] = rows.roll(-1)
    return partner


def make_loss(
    name: str, *, margin: float = 0.4, gamma: float = 80.0, temperature: float = 0.1, center: bool = False
) -> LossFn:
    """``loss(embeddings, labels) -> ContrastiveOutput`` for ``circle``, ``supcon`` or ``infonce``.

    InfoNCE has one positive per row: another prompt of the same class; the other rows, same class
    included, are its negatives. ``center`` subtracts the batch mean before the loss: hidden states share
    a large common direction (raw cosines near 1 for every pair), and without centring the cheapest way to
    lower cross-class cosine is to shrink that direction rather than to separate the classes.
    """
    if name == "circle":
        loss = lambda e, y: circle_loss(e, y, margin=margin, gamma=gamma, return_metrics=True)  # noqa: E731
    elif name == "supcon":
        loss = lambda e, y: supcon_loss(e, y, temperature=temperature, return_metrics=True)  # noqa: E731
    elif name == "infonce":
        loss = lambda e, y: info_nce(  # noqa: E731
            e, positive=same_class_partner(y), temperature=temperature, return_metrics=True
        )
    else:
        raise ValueError(f"loss must be one of {LOSSES}, got {name!r}")
    return (lambda e, y: loss(e - e.mean(0, keepdim=True), y)) if center else loss
