"""The contrastive objective of the DCR stage: a class-label loss from `dcr_kernels` chosen by name, on
one process or over the ranks of a run (`dcr_kernels.distributed`: the loss of the global batch, positives
and negatives on any rank)."""

from __future__ import annotations

from collections.abc import Callable

import torch

import dcr_kernels.distributed as dd
from dcr_kernels import ContrastiveOutput, circle_loss, info_nce, supcon_loss
from dcr_kernels.distributed.comm import gather_rows, gather_with_grad, row_counts
from dcr_kernels.distributed.world import World

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
    name: str,
    *,
    margin: float = 0.4,
    gamma: float = 80.0,
    temperature: float = 0.1,
    center: bool = False,
    strategy: str | None = None,
) -> LossFn:
    """``loss(embeddings, labels) -> ContrastiveOutput`` for ``circle``, ``supcon`` or ``infonce``.

    InfoNCE has one positive per row: another prompt of the same class; the other rows, same class
    included, are its negatives. ``center`` subtracts the batch mean before the loss: hidden states share
    a large common direction (raw cosines near 1 for every pair), and without centring the cheapest way to
    lower cross-class cosine is to shrink that direction rather than to separate the classes.

    With ``strategy`` ("gather" or "ring") the embeddings and labels are this rank's rows of a global batch
    (rows of all ranks concatenated in rank order): the loss, its centring mean and InfoNCE's partners are
    those of the global batch, with `dcr_kernels.distributed`'s gradient convention (average the
    parameters' gradients over ranks).
    """
    if strategy is not None:
        return _distributed_loss(name, margin, gamma, temperature, center, strategy)
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


def _distributed_loss(name: str, margin: float, gamma: float, temperature: float, center: bool, strategy: str):
    if name not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {name!r}")

    def loss(e: torch.Tensor, y: torch.Tensor) -> ContrastiveOutput:
        world = World.of()
        sizes = row_counts(y, world)
        if center:  # the global batch mean, with its gradient reaching every rank's rows
            e = e - gather_with_grad(e, sizes, world).mean(0, keepdim=True)
        kw = dict(strategy=strategy, return_metrics=True)
        if name == "circle":
            return dd.circle_loss(e, y, margin=margin, gamma=gamma, **kw)
        if name == "supcon":
            return dd.supcon_loss(e, y, temperature=temperature, **kw)
        start = sum(sizes[: world.rank])
        partner = same_class_partner(gather_rows(y, sizes, world))[start : start + len(y)]
        return dd.info_nce(e, positive=partner, temperature=temperature, **kw)

    return loss
