"""pytorch-metric-learning's `CircleLoss(m, gamma)` and `SupConLoss(temperature)` on the fused losses.

Same call, `loss(embeddings, labels, indices_tuple=None, ref_emb=None, ref_labels=None)`, and the same
default reduction (pml's `AvgNonZeroReducer`: the mean over rows whose loss is > 0, a zero loss attached to
the graph when there is none). Cosine similarities as pml's default distance. With `ref_emb` the rows of
`embeddings` are scored against the reference rows only (cross mode), as in pml. Miners, other reducers,
distances and regularisers are refused with an error that says why: the fused loss scores every pair and
never forms the pair list they work on.

    from dcr_kernels.integrations.pml import CircleLoss   # was: from pytorch_metric_learning.losses import CircleLoss
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from .. import functional as F

_UNSUPPORTED = ("reducer", "distance", "embedding_regularizer", "collect_stats")


def _refuse(name: str, kwargs: dict[str, Any]) -> None:
    if kwargs:
        raise TypeError(
            f"{name}: {sorted(kwargs)} not supported; the fused loss scores every pair with cosine similarity and "
            "reduces with pml's default AvgNonZeroReducer (use reduction='none' in dcr_kernels for per-row losses)"
        )


def _avg_non_zero(rows: Tensor) -> Tensor:
    """pml's AvgNonZeroReducer: the mean of the positive row losses, or a zero attached to the graph."""
    positive = rows > 0
    if bool(positive.any()):
        return rows[positive].mean()
    return rows.sum() * 0


class _PmlLoss(nn.Module):
    """pml's call and default reduction around a fused per-row loss (`rows`)."""

    def __init__(self, backend: str, kwargs: dict[str, Any]) -> None:
        super().__init__()
        _refuse(type(self).__name__, kwargs)
        self.backend = backend

    def rows(self, embeddings: Tensor, labels: Tensor, ref_emb: Tensor | None, ref_labels: Tensor | None) -> Tensor:
        raise NotImplementedError

    def forward(
        self,
        embeddings: Tensor,
        labels: Tensor | None = None,
        indices_tuple: Any = None,
        ref_emb: Tensor | None = None,
        ref_labels: Tensor | None = None,
    ) -> Tensor:
        name = type(self).__name__
        if indices_tuple is not None:
            raise ValueError(
                f"{name}: miners (indices_tuple) are not supported: the fused loss never forms a pair list; drop "
                "the miner, or weight rows with dcr_kernels' `weight=`"
            )
        if labels is None:
            raise ValueError(f"{name}: labels are required (one class label per embedding)")
        if ref_emb is not None and ref_labels is None:
            raise ValueError(f"{name}: ref_emb needs ref_labels (one class label per reference embedding)")
        return _avg_non_zero(self.rows(embeddings, labels, ref_emb, ref_labels))


class CircleLoss(_PmlLoss):
    """Circle loss (Sun et al. 2020), pml's signature and default reduction; alpha weights detached."""

    def __init__(self, m: float = 0.4, gamma: float = 80, *, backend: str = "auto", **kwargs: Any) -> None:
        super().__init__(backend, kwargs)
        self.m, self.gamma = float(m), float(gamma)

    def rows(self, embeddings, labels, ref_emb, ref_labels) -> Tensor:
        kw = dict(margin=self.m, gamma=self.gamma, reduction="none", backend=self.backend)
        return F.circle_loss(embeddings, labels, ref_emb, ref_labels, **kw)


class SupConLoss(_PmlLoss):
    """Supervised contrastive loss (the L_out form), pml's signature and default reduction."""

    def __init__(self, temperature: float = 0.1, *, backend: str = "auto", **kwargs: Any) -> None:
        super().__init__(backend, kwargs)
        self.temperature = float(temperature)

    def rows(self, embeddings, labels, ref_emb, ref_labels) -> Tensor:
        kw = dict(temperature=self.temperature, reduction="none", backend=self.backend)
        return F.supcon_loss(embeddings, labels, ref_emb, ref_labels, **kw)


__all__ = ["CircleLoss", "SupConLoss"]
