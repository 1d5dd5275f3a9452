"""Per-row loss statistics of this rank's rows against key blocks that arrive one at a time.

For local rows A and the key blocks B of a `KeySource` (every rank's keys around a ring, or one gathered
block), the forward merges each block's row statistics: softmax lse and Circle's LSE over positives and over
negatives with a log-add-exp, the sigmoid loss's row sums by adding them; it keeps the best similarity and its
global column (not for the sigmoid loss, which has no accuracy). For the softmax family it also sums the
positive keys t_i = sum_{j in P(i)} k_j: the target term is linear in K (docs/design.md, "The math"), so the
caller forms it as s a_i . t_i / |P(i)| with plain autograd. The backward visits the blocks again: dA += W B
per block, and each block's dB = W^T A (plus the target's share) goes back to the rank that owns the block.
Every family is one `Pairs` description on the block primitives (`backends.blocks`), so a loss added there
runs across ranks here unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..backends import blocks
from ..backends.base import CIRCLE, SIGMOID, SOFTMAX, Pairs, compute_dtype
from ..backends.tiles import Term
from ..pair_terms import circle_row_loss, safe_lse
from .comm import KeySource


@dataclass(frozen=True)
class RowSpec:
    """What to compute. labels: class codes of the local rows; key_labels: codes of every key of the global
    batch in rank order (InfoNCE and the sigmoid loss: the positive's global column, and each key's global
    index). `targets`: sum the positive keys (softmax family)."""

    loss: int
    labels: Tensor
    key_labels: Tensor
    targets: bool
    margin: float = 0.0
    gamma: float = 0.0
    backend: str = "auto"

    def pairs(self, labels_b: Tensor, exclude_offset: int | None, scale: Tensor) -> Pairs:
        """The candidate pairs of the local rows against one key block."""
        return Pairs(self.loss, exclude_offset, scale, self.labels, labels_b, self.margin, self.gamma)


def positive_sum(labels_a: Tensor, b: Tensor, labels_b: Tensor, exclude_offset: int | None) -> Tensor:
    """t_i = sum of the rows b_j with labels_b[j] == labels_a[i], except j = i + exclude_offset; O((M + N) D).
    Its transpose is the same sum with the roles swapped and the offset negated."""
    classes, codes = torch.unique(labels_b, return_inverse=True)
    sums = b.new_zeros(classes.shape[0], b.shape[1]).index_add_(0, codes, b)
    slot = torch.searchsorted(classes, labels_a).clamp(max=classes.shape[0] - 1)
    t = torch.where((classes[slot] == labels_a)[:, None], sums[slot], 0.0)
    if exclude_offset is not None:
        i = torch.arange(labels_a.shape[0], device=b.device)
        j = i + exclude_offset
        inside = (j >= 0) & (j < b.shape[0])
        i, j = i[inside], j[inside]
        hit = labels_b[j] == labels_a[i]
        t.index_add_(0, i[hit], -b[j[hit]])
    return t


def _backward_term(loss: int, stat1: Tensor, stat2: Tensor, g: Tensor) -> Term:
    """Final statistics (+inf where a row is not counted) and coefficients d loss / d statistic."""
    if loss == SOFTMAX:
        return safe_lse(stat1), None, g
    if loss == SIGMOID:
        return stat1, None, g  # each pair is scored alone: the coefficients are all W needs
    total = stat1 + stat2
    counted = torch.isfinite(total)
    coef = torch.where(counted, torch.sigmoid(torch.where(counted, total, 0.0)) * g, 0.0)
    return torch.where(counted, stat1, float("inf")), torch.where(counted, stat2, float("inf")), coef


def _negate(offset: int | None) -> int | None:
    return None if offset is None else -offset


class BlockRows(torch.autograd.Function):
    """(value, t, best column) for the local rows a against every key block of `source` (b: this rank's block).

    value: softmax lse, the Circle row loss softplus(LSE_P + LSE_N) (0 where P or N is empty), or the sigmoid
    loss's row sum; t: the sum of each row's positive keys (softmax family, else empty); best column: global
    index of the most similar candidate key, -1 if none (always -1 for the sigmoid loss). Differentiable in a,
    b and the scale (softmax: s; sigmoid: the 2-vector (t, b))."""

    @staticmethod
    def forward(
        ctx, a: Tensor, b: Tensor, scale: Tensor, spec: RowSpec, source: KeySource
    ) -> tuple[Tensor, Tensor, Tensor]:
        dtype = compute_dtype(a.dtype)
        m = a.shape[0]
        additive = spec.loss == SIGMOID  # row sums add; log-sum-exps merge by log-add-exp
        stat1 = torch.full((m,), 0.0 if additive else float("-inf"), dtype=dtype, device=a.device)
        stat2 = stat1.clone()
        best = stat1.clone()
        best_col = torch.full((m,), -1, dtype=torch.long, device=a.device)
        t = torch.zeros(m, a.shape[1] if spec.targets else 0, dtype=dtype, device=a.device)
        for src, block in source.walk(b.detach()):
            start = source.offsets[src]
            labels_b = spec.key_labels[start : start + block.shape[0]]
            exclude = source.exclude(src)
            pairs = spec.pairs(labels_b, exclude, scale)
            st = blocks.rows_forward(a, block, pairs, want_best=not additive, backend=spec.backend)
            if additive:
                stat1 = stat1 + st.stat1.to(dtype)
                continue
            stat1 = torch.logaddexp(stat1, st.stat1.to(dtype))
            if st.stat2 is not None:
                stat2 = torch.logaddexp(stat2, st.stat2.to(dtype))
            better = st.best.to(dtype) > best
            best = torch.where(better, st.best.to(dtype), best)
            best_col = torch.where(better, st.argmax + start, best_col)
            if spec.targets:
                t += positive_sum(spec.labels, block.to(dtype), labels_b, exclude)
        value = circle_row_loss(stat1, stat2) if spec.loss == CIRCLE else stat1
        ctx.save_for_backward(a, b, scale, stat1, stat2)
        ctx.spec, ctx.source = spec, source
        ctx.mark_non_differentiable(best_col)
        return value, t, best_col

    @staticmethod
    def backward(ctx, grad_value: Tensor | None, grad_t: Tensor | None, _grad_col: None):
        a, b, scale, stat1, stat2 = ctx.saved_tensors
        spec, source = ctx.spec, ctx.source
        dtype = compute_dtype(a.dtype)
        g = torch.zeros_like(stat1) if grad_value is None else grad_value.to(dtype)
        term = _backward_term(spec.loss, stat1, stat2, g)
        da = torch.zeros(a.shape, dtype=dtype, device=a.device)
        dscale = torch.zeros(scale.shape, dtype=dtype, device=a.device)
        walk = source.walk_back(b.detach(), dtype)
        for src, block in walk:
            start = source.offsets[src]
            labels_b = spec.key_labels[start : start + block.shape[0]]
            exclude = source.exclude(src)
            pairs = spec.pairs(labels_b, exclude, scale)
            da_part, db, ds_part = blocks.rows_backward(a, block, pairs, term, None, want_db=True, backend=spec.backend)
            da += da_part.to(dtype)
            dscale += ds_part.to(dtype).reshape(dscale.shape)
            db = db.to(dtype)
            if grad_t is not None and spec.targets:
                db += positive_sum(labels_b, grad_t.to(dtype), spec.labels, _negate(exclude))
            walk.give(db)
        ds = dscale.to(scale.dtype).reshape(scale.shape) if ctx.needs_input_grad[2] else None
        return da.to(a.dtype), walk.total.to(b.dtype), ds, None, None
