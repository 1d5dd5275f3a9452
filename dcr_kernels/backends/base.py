"""What every backend returns: the per-row statistics the functional layer turns into losses.

A backend computes only the nonlinear part of a loss. Given per-row coefficients (the reduction's
weights), it may also return the weighted total directly, which lets it compute gradients while the data
is hot; without coefficients it returns differentiable per-row vectors.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor

from ..pair_terms import weighted_total

SOFTMAX, CIRCLE, SIGMOID = 0, 1, 2  # loss families, as the block primitives and the Triton kernels name them


class Pairs(NamedTuple):
    """Which pairs (i, j) of S = A B^T are candidates and how their logits are formed, for the block
    primitives and the kernels: the loss family, the excluded pair (i, i + exclude_offset) (None: every pair
    is a candidate), the softmax scale s (a 1-element tensor; the sigmoid loss's (t, b)), the Circle labels of
    A's and B's rows (the sigmoid loss's: each row's positive column, and the columns' indices), m, gamma,
    the precision of fp32 dots and GEMMs (`dcr_kernels.precision`, decided once per forward), and a guide
    model's candidate rule."""

    loss: int
    exclude_offset: int | None = None
    scale: Tensor | None = None
    labels_a: Tensor | None = None
    labels_b: Tensor | None = None
    margin: float = 0.0
    gamma: float = 0.0
    precision: str | None = None  # None: decided when the kernels launch
    guide: Any = None  # `tiles.Guide`: a guide model's candidate rule (GISTEmbed); row-chunked PyTorch only


class SoftmaxStats(NamedTuple):
    """lse: row log-sum-exp of z = s * S over the candidate set (M,), -inf for an empty set.
    col_lse: column log-sum-exp (N,) for the symmetric loss, else None.
    argmax: index of the row's most similar candidate key (M,), -1 if none; None where the call asked for no
    argmax (`argmax=False`, so that the Triton forward skips the search).
    total: sum_i coeff_i lse_i + sum_j col_coeff_j col_lse_j when coefficients were given, else None."""

    lse: Tensor
    col_lse: Tensor | None
    argmax: Tensor | None
    total: Tensor | None


class CircleStats(NamedTuple):
    """row_loss: softplus(LSE_P z + LSE_N z) per row (M,), 0 where P(i) or N(i) is empty.
    argmax: index of the row's most similar other key (M,), -1 if none; None as for SoftmaxStats.
    total: sum_i coeff_i row_loss_i when coefficients were given, else None."""

    row_loss: Tensor
    argmax: Tensor | None
    total: Tensor | None


def softmax_total(lse: Tensor, col_lse: Tensor | None, coeff: Tensor | None, col_coeff: Tensor | None) -> Tensor | None:
    """sum_i coeff_i lse_i (+ sum_j col_coeff_j col_lse_j), or None without coefficients."""
    if coeff is None:
        return None
    total = weighted_total(coeff.to(lse.dtype), lse)
    if col_lse is not None and col_coeff is not None:
        total = total + weighted_total(col_coeff.to(lse.dtype), col_lse)
    return total


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Similarities, statistics and accumulators are fp32 (fp64 for fp64 inputs)."""
    return torch.float64 if dtype == torch.float64 else torch.float32
