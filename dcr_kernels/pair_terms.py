"""The per-pair math of each loss (docs/design.md, "The math"), written once for the PyTorch backends.

Softmax family: z_ij = s * S_ij over the candidate set; the backends only need the row (and, for the
symmetric loss, column) log-sum-exp, since the target term is linear and lives in `functional.py`.

Circle: for positives z_ij = -gamma * a_ij * (S_ij - (1 - m)) with a_ij = relu(1 + m - S_ij); for
negatives z_ij = gamma * a_ij * (S_ij - m) with a_ij = relu(S_ij + m). The weights a_ij are detached, as in
the paper's reference code, so dz_ij / dS_ij = -gamma * a_ij (positives) or +gamma * a_ij (negatives).
Row loss: softplus(LSE_P z + LSE_N z).

Pairwise sigmoid (SigLIP): z_ij = t S_ij + b, label l_ij = +1 for the row's positive key, -1 otherwise;
the pair's term is softplus(-l_ij z_ij) = -log sigmoid(l_ij z_ij), its slope d term / d z_ij =
-l_ij sigmoid(-l_ij z_ij). The row loss is the sum of its pairs' terms: no statistic to carry between
key blocks but the sum itself.
"""

from __future__ import annotations

import torch
from torch import Tensor


def circle_logits(sim: Tensor, margin: float, gamma: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Return (z_pos, z_neg, dz_pos/dS, dz_neg/dS) for every entry of `sim`, alpha weights detached."""
    alpha_pos = torch.relu(1.0 + margin - sim.detach())
    alpha_neg = torch.relu(sim.detach() + margin)
    z_pos = -gamma * alpha_pos * (sim - (1.0 - margin))
    z_neg = gamma * alpha_neg * (sim - margin)
    return z_pos, z_neg, -gamma * alpha_pos, gamma * alpha_neg


def masked_logsumexp(z: Tensor, mask: Tensor, dim: int) -> Tensor:
    """log sum exp over the entries where `mask` is true; -inf where no entry is; gradient-safe."""
    any_valid = mask.any(dim=dim, keepdim=True)
    safe = torch.where(mask, z, torch.where(any_valid, torch.full_like(z, float("-inf")), torch.zeros_like(z)))
    lse = torch.logsumexp(safe, dim=dim)
    return torch.where(any_valid.squeeze(dim), lse, torch.full_like(lse, float("-inf")))


def circle_row_loss(lse_pos: Tensor, lse_neg: Tensor) -> Tensor:
    """softplus(lse_pos + lse_neg), 0 where either set is empty (an infinite statistic)."""
    total = lse_pos + lse_neg
    valid = torch.isfinite(total)
    return torch.where(valid, torch.nn.functional.softplus(torch.where(valid, total, 0.0)), 0.0)


def weighted_total(coeff: Tensor, values: Tensor) -> Tensor:
    """sum_i coeff_i * values_i, where rows with a zero coefficient contribute nothing (even if -inf)."""
    keep = coeff != 0
    return torch.where(keep, coeff * torch.where(keep, values, 0.0), 0.0).sum()


def safe_lse(lse: Tensor) -> Tensor:
    """Replace -inf statistics (empty candidate sets) by +inf so that exp(z - lse) is 0, never NaN."""
    return torch.where(torch.isfinite(lse), lse, float("inf"))


def argmax_or_minus_one(scores: Tensor) -> Tensor:
    """Row argmax of scores whose masked entries are -inf; -1 where a row has no finite entry."""
    best, idx = scores.max(dim=1)
    return torch.where(best > float("-inf"), idx, torch.full_like(idx, -1))


def row_dots(a: Tensor, b: Tensor) -> Tensor:
    """a_i . b_i per row as a batched matrix product, without an elementwise product buffer of a's size."""
    return torch.einsum("id,id->i", a, b)


def sigmoid_terms(logits: Tensor, positive: Tensor) -> tuple[Tensor, Tensor]:
    """(softplus(-l z), d/dz) for logits z and the positive mask (l = +1 where True, -1 elsewhere)."""
    signed = torch.where(positive, -logits, logits)  # -l z
    # -logsigmoid(l z), exact at any size (F.softplus turns linear above its threshold, 2e-9 off at 20)
    return -torch.nn.functional.logsigmoid(-signed), torch.where(positive, -1.0, 1.0) * torch.sigmoid(signed)
