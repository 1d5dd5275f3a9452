"""Dense reference backend: the full M x N similarity matrix and plain autograd, in any dtype.

The ground truth for tests (run it in float64). Memory O(M N): not for large batches. The argmax is always
computed (`argmax=False` is accepted and changes nothing).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..pair_terms import (
    argmax_or_minus_one,
    circle_logits,
    circle_row_loss,
    masked_logsumexp,
    sigmoid_terms,
    weighted_total,
)
from .base import CircleStats, SoftmaxStats, compute_dtype, softmax_total


def _similarity(q: Tensor, k: Tensor, self_mode: bool) -> tuple[Tensor, Tensor]:
    dtype = compute_dtype(q.dtype)
    sim = q.to(dtype) @ k.to(dtype).T
    candidate = torch.ones_like(sim, dtype=torch.bool)
    if self_mode:
        candidate.fill_diagonal_(False)
    return sim, candidate


def softmax_stats(
    q: Tensor,
    k: Tensor,
    scale: Tensor,
    *,
    self_mode: bool,
    columns: bool,
    coeff: Tensor | None = None,
    col_coeff: Tensor | None = None,
    argmax: bool = True,
) -> SoftmaxStats:
    sim, candidate = _similarity(q, k, self_mode)
    z = scale.to(sim.dtype) * sim
    lse = masked_logsumexp(z, candidate, dim=1)
    col_lse = masked_logsumexp(z, candidate, dim=0) if columns else None
    argmax = argmax_or_minus_one(sim.detach().masked_fill(~candidate, float("-inf")))
    return SoftmaxStats(lse, col_lse, argmax, softmax_total(lse, col_lse, coeff, col_coeff))


def circle_stats(
    q: Tensor,
    k: Tensor,
    q_labels: Tensor,
    k_labels: Tensor,
    *,
    margin: float,
    gamma: float,
    self_mode: bool,
    coeff: Tensor | None = None,
    argmax: bool = True,
) -> CircleStats:
    sim, candidate = _similarity(q, k, self_mode)
    same = q_labels[:, None] == k_labels[None, :]
    z_pos, z_neg, _, _ = circle_logits(sim, margin, gamma)
    lse_pos = masked_logsumexp(z_pos, same & candidate, dim=1)
    lse_neg = masked_logsumexp(z_neg, ~same, dim=1)
    row_loss = circle_row_loss(lse_pos, lse_neg)
    argmax = argmax_or_minus_one(sim.detach().masked_fill(~candidate, float("-inf")))
    total = weighted_total(coeff.to(row_loss.dtype), row_loss) if coeff is not None else None
    return CircleStats(row_loss, argmax, total)


def sigmoid_rows(q: Tensor, k: Tensor, positive: Tensor, scale: Tensor, bias: Tensor) -> Tensor:
    """Per-row sums of the pairwise sigmoid terms over the dense M x N logits."""
    sim, _ = _similarity(q, k, False)
    is_positive = positive[:, None] == torch.arange(k.shape[0], device=k.device)[None, :]
    terms, _ = sigmoid_terms(scale.to(sim.dtype) * sim + bias.to(sim.dtype), is_positive)
    return terms.sum(dim=1)
