"""Row-chunked PyTorch backend: the CPU backend and the fallback everywhere.

Rows are processed in chunks of `chunk` rows against all N keys, so the peak extra memory is
O(chunk x N) and no M x N buffer ever exists. The chunk size comes from a memory budget
(`DCR_CHUNK_BYTES`, default 64 MiB). When the caller passes reduction coefficients (mean or sum), the
gradients are computed in the same pass as the loss, while each chunk is hot, and the backward only
rescales them; with per-row outputs (reduction "none") the backward recomputes the chunks.
Cost in B^2 D matmul units: fused forward+backward 3 (S, W K, W^T Q), plus 1 for the column statistics
of the symmetric loss; the per-row path spends 1 forward and 3 backward.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

from ..losses import argmax_or_minus_one, circle_logits, circle_row_loss, safe_lse, weighted_total
from .base import CircleStats, SoftmaxStats, compute_dtype

DEFAULT_CHUNK_BYTES = 64 << 20
_SOFTMAX_TEMPORARIES = 5  # sim, z, probabilities, column probabilities, exp scratch
_CIRCLE_TEMPORARIES = 12  # sim, masks, two alphas, two logits, two slopes, two probabilities, scratch


def chunk_rows(n_cols: int, temporaries: int, itemsize: int, budget: int | None = None) -> int:
    """Rows per chunk so that `temporaries` buffers of chunk x n_cols elements fit in the budget."""
    if budget is None:
        budget = int(os.environ.get("DCR_CHUNK_BYTES", DEFAULT_CHUNK_BYTES))
    return max(1, budget // max(1, n_cols * temporaries * itemsize))


class _Grads:
    """fp32 (fp64) gradient accumulators for queries, keys and the scale."""

    def __init__(self, q: Tensor, k: Tensor, self_mode: bool):
        self.self_mode = self_mode
        self.dq = torch.zeros_like(q)
        self.dk = self.dq if self_mode else torch.zeros_like(k)
        self.ds = torch.zeros((), dtype=q.dtype, device=q.device)

    def add_chunk(self, r0: int, dlogits: Tensor, qb: Tensor, k: Tensor) -> None:
        """dQ_rows += W K and dK += W^T Q_rows for W = d loss / d S of one row chunk."""
        self.dq[r0 : r0 + qb.shape[0]] += dlogits @ k
        self.dk.addmm_(dlogits.T, qb)


def _softmax_pass(
    q: Tensor,
    k: Tensor,
    s: Tensor,
    self_mode: bool,
    chunk: int,
    *,
    g: Tensor | None,
    lse: Tensor | None = None,
    col_lse: Tensor | None = None,
    col_g: Tensor | None = None,
) -> tuple[Tensor, Tensor, _Grads | None]:
    """One pass over row chunks. Computes row lse and argmax (unless `lse` is given) and, when `g` is
    given, accumulates the gradients of sum_i g_i lse_i + sum_j col_g_j col_lse_j."""
    m = q.shape[0]
    out_lse = torch.empty(m, dtype=q.dtype, device=q.device) if lse is None else lse
    argmax = torch.empty(m, dtype=torch.long, device=q.device)
    grads = _Grads(q, k, self_mode) if g is not None else None
    col_base = safe_lse(col_lse)[None, :] if col_g is not None else None
    for r0 in range(0, m, chunk):
        qb = q[r0 : r0 + chunk]
        sim = qb @ k.T
        z = sim * s
        if self_mode:
            z.diagonal(r0).fill_(float("-inf"))
        if lse is None:
            out_lse[r0 : r0 + chunk] = torch.logsumexp(z, dim=1)
            argmax[r0 : r0 + chunk] = argmax_or_minus_one(z)
        if grads is None:
            continue
        row_base = safe_lse(out_lse[r0 : r0 + chunk])[:, None]
        dlogits = torch.exp(z - row_base).mul_(g[r0 : r0 + chunk, None])
        if col_base is not None:
            dlogits += torch.exp(z.sub_(col_base)).mul_(col_g[None, :])
        grads.ds += (dlogits * sim).sum()
        grads.add_chunk(r0, dlogits.mul_(s), qb, k)
    return out_lse, argmax, grads


def _column_lse(q: Tensor, k: Tensor, s: Tensor, chunk: int) -> Tensor:
    """Column log-sum-exp of z = s * Q K^T (cross mode), merged over row chunks."""
    col = torch.full((k.shape[0],), float("-inf"), dtype=q.dtype, device=q.device)
    for r0 in range(0, q.shape[0], chunk):
        col = torch.logaddexp(col, torch.logsumexp((q[r0 : r0 + chunk] @ k.T) * s, dim=0))
    return col


def _circle_pass(
    q: Tensor,
    k: Tensor,
    q_labels: Tensor,
    k_labels: Tensor,
    margin: float,
    gamma: float,
    self_mode: bool,
    chunk: int,
    *,
    g: Tensor | None,
) -> tuple[Tensor, Tensor, _Grads | None]:
    """One pass over row chunks: per-row Circle loss and argmax and, when `g` is given, the gradients of
    sum_i g_i L_i."""
    m = q.shape[0]
    row_loss = torch.empty(m, dtype=q.dtype, device=q.device)
    argmax = torch.empty(m, dtype=torch.long, device=q.device)
    grads = _Grads(q, k, self_mode) if g is not None else None
    for r0 in range(0, m, chunk):
        qb = q[r0 : r0 + chunk]
        sim = qb @ k.T
        same = q_labels[r0 : r0 + chunk, None] == k_labels[None, :]
        positive = same.clone()
        if self_mode:
            positive.diagonal(r0).fill_(False)
        z_pos, z_neg, slope_pos, slope_neg = circle_logits(sim, margin, gamma)
        z_pos.masked_fill_(~positive, float("-inf"))
        z_neg.masked_fill_(same, float("-inf"))
        lse_pos = torch.logsumexp(z_pos, dim=1)
        lse_neg = torch.logsumexp(z_neg, dim=1)
        row_loss[r0 : r0 + chunk] = circle_row_loss(lse_pos, lse_neg)
        if self_mode:
            sim.diagonal(r0).fill_(float("-inf"))
        argmax[r0 : r0 + chunk] = argmax_or_minus_one(sim)
        if grads is None:
            continue
        total = lse_pos + lse_neg
        coef = torch.where(torch.isfinite(total), torch.sigmoid(total) * g[r0 : r0 + chunk], 0.0)[:, None]
        dsim = torch.exp(z_pos.sub_(safe_lse(lse_pos)[:, None])).mul_(slope_pos)
        dsim += torch.exp(z_neg.sub_(safe_lse(lse_neg)[:, None])).mul_(slope_neg)
        grads.add_chunk(r0, dsim.mul_(coef), qb, k)
    return row_loss, argmax, grads


def _upcast(q: Tensor, k: Tensor, self_mode: bool) -> tuple[Tensor, Tensor]:
    dtype = compute_dtype(q.dtype)
    qc = q.to(dtype)
    return qc, (qc if self_mode else k.to(dtype))


def _cast_grads(ctx, grads: _Grads, q: Tensor, k: Tensor, self_mode: bool, scale: Tensor, factor=None):
    """Return (dq, dk, dscale) in the inputs' dtypes, scaled by `factor` (an upstream scalar)."""
    f = 1.0 if factor is None else factor
    dq = (grads.dq * f).to(q.dtype) if ctx.needs_input_grad[0] else None
    dk = None
    if not self_mode and ctx.needs_input_grad[1]:
        dk = (grads.dk * f).to(k.dtype)
    ds = (grads.ds * f).to(scale.dtype).reshape(scale.shape) if ctx.needs_input_grad[2] else None
    return dq, dk, ds


class _SoftmaxRows(torch.autograd.Function):
    """Differentiable per-row (and per-column) lse; the backward recomputes the chunks."""

    @staticmethod
    def forward(ctx, q, k, scale, self_mode, columns, chunk):
        qc, kc = _upcast(q, k, self_mode)
        s = scale.to(qc.dtype)
        lse, argmax, _ = _softmax_pass(qc, kc, s, self_mode, chunk, g=None)
        col_lse = _column_lse(qc, kc, s, chunk) if columns else torch.empty(0, dtype=qc.dtype)
        ctx.save_for_backward(q, k, scale, lse, col_lse)
        ctx.self_mode, ctx.columns, ctx.chunk = self_mode, columns, chunk
        ctx.mark_non_differentiable(argmax)
        return lse, col_lse, argmax

    @staticmethod
    def backward(ctx, grad_lse, grad_col, _grad_argmax):
        q, k, scale, lse, col_lse = ctx.saved_tensors
        qc, kc = _upcast(q, k, ctx.self_mode)
        g = grad_lse if grad_lse is not None else torch.zeros_like(lse)
        col_g = grad_col if ctx.columns and grad_col is not None else None
        _, _, grads = _softmax_pass(
            qc, kc, scale.to(qc.dtype), ctx.self_mode, ctx.chunk,
            g=g.to(qc.dtype), lse=lse, col_lse=col_lse if col_g is not None else None,
            col_g=None if col_g is None else col_g.to(qc.dtype),
        )  # fmt: skip
        return (*_cast_grads(ctx, grads, q, k, ctx.self_mode, scale), None, None, None)


class _SoftmaxFused(torch.autograd.Function):
    """The weighted total sum_i c_i lse_i (+ columns) with gradients computed in the forward pass."""

    @staticmethod
    def forward(ctx, q, k, scale, coeff, col_coeff, self_mode, chunk):
        qc, kc = _upcast(q, k, self_mode)
        s = scale.to(qc.dtype)
        coeff = coeff.to(qc.dtype)
        col_lse = _column_lse(qc, kc, s, chunk) if col_coeff is not None else None
        col_g = None if col_coeff is None else col_coeff.to(qc.dtype)
        lse, argmax, grads = _softmax_pass(qc, kc, s, self_mode, chunk, g=coeff, col_lse=col_lse, col_g=col_g)
        total = weighted_total(coeff, lse)
        if col_lse is not None:
            total = total + weighted_total(col_g, col_lse)
        else:
            col_lse = torch.empty(0, dtype=qc.dtype)
        ctx.grads, ctx.self_mode = grads, self_mode
        ctx.save_for_backward(q, k, scale)
        ctx.mark_non_differentiable(lse, col_lse, argmax)
        return total, lse, col_lse, argmax

    @staticmethod
    def backward(ctx, grad_total, *_):
        q, k, scale = ctx.saved_tensors
        grads = _cast_grads(ctx, ctx.grads, q, k, ctx.self_mode, scale, grad_total)
        return (*grads, None, None, None, None)


class _CircleRows(torch.autograd.Function):
    """Differentiable per-row Circle loss; the backward recomputes the chunks."""

    @staticmethod
    def forward(ctx, q, k, q_labels, k_labels, margin, gamma, self_mode, chunk):
        qc, kc = _upcast(q, k, self_mode)
        row_loss, argmax, _ = _circle_pass(qc, kc, q_labels, k_labels, margin, gamma, self_mode, chunk, g=None)
        ctx.save_for_backward(q, k, q_labels, k_labels)
        ctx.args = (margin, gamma, self_mode, chunk)
        ctx.mark_non_differentiable(argmax)
        return row_loss, argmax

    @staticmethod
    def backward(ctx, grad_rows, _grad_argmax):
        q, k, q_labels, k_labels = ctx.saved_tensors
        margin, gamma, self_mode, chunk = ctx.args
        qc, kc = _upcast(q, k, self_mode)
        g = grad_rows.to(qc.dtype)
        _, _, grads = _circle_pass(qc, kc, q_labels, k_labels, margin, gamma, self_mode, chunk, g=g)
        dq = grads.dq.to(q.dtype) if ctx.needs_input_grad[0] else None
        dk = grads.dk.to(k.dtype) if ctx.needs_input_grad[1] and not self_mode else None
        return dq, dk, None, None, None, None, None, None


class _CircleFused(torch.autograd.Function):
    """The weighted total sum_i c_i L_i of the Circle loss with gradients computed in the forward pass."""

    @staticmethod
    def forward(ctx, q, k, q_labels, k_labels, coeff, margin, gamma, self_mode, chunk):
        qc, kc = _upcast(q, k, self_mode)
        coeff = coeff.to(qc.dtype)
        row_loss, argmax, grads = _circle_pass(qc, kc, q_labels, k_labels, margin, gamma, self_mode, chunk, g=coeff)
        ctx.grads, ctx.self_mode = grads, self_mode
        ctx.dtypes = (q.dtype, k.dtype)
        ctx.mark_non_differentiable(row_loss, argmax)
        return weighted_total(coeff, row_loss), row_loss, argmax

    @staticmethod
    def backward(ctx, grad_total, *_):
        grads = ctx.grads
        dq = (grads.dq * grad_total).to(ctx.dtypes[0]) if ctx.needs_input_grad[0] else None
        dk = None
        if ctx.needs_input_grad[1] and not ctx.self_mode:
            dk = (grads.dk * grad_total).to(ctx.dtypes[1])
        return dq, dk, None, None, None, None, None, None, None


def _wants_grad(*tensors: Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def softmax_stats(
    q: Tensor,
    k: Tensor,
    scale: Tensor,
    *,
    self_mode: bool,
    columns: bool,
    coeff: Tensor | None = None,
    col_coeff: Tensor | None = None,
) -> SoftmaxStats:
    itemsize = torch.finfo(compute_dtype(q.dtype)).bits // 8
    chunk = chunk_rows(k.shape[0], _SOFTMAX_TEMPORARIES, itemsize)
    if coeff is not None and _wants_grad(q, k, scale):
        col_coeff = col_coeff if columns else None
        total, lse, col_lse, argmax = _SoftmaxFused.apply(q, k, scale, coeff, col_coeff, self_mode, chunk)
        return SoftmaxStats(lse, col_lse if columns else None, argmax, total)
    lse, col_lse, argmax = _SoftmaxRows.apply(q, k, scale, self_mode, columns, chunk)
    col_lse = col_lse if columns else None
    total = None
    if coeff is not None:
        total = weighted_total(coeff.to(lse.dtype), lse)
        if col_lse is not None:
            total = total + weighted_total(col_coeff.to(lse.dtype), col_lse)
    return SoftmaxStats(lse, col_lse, argmax, total)


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
) -> CircleStats:
    itemsize = torch.finfo(compute_dtype(q.dtype)).bits // 8
    chunk = chunk_rows(k.shape[0], _CIRCLE_TEMPORARIES, itemsize)
    if coeff is not None and _wants_grad(q, k):
        total, row_loss, argmax = _CircleFused.apply(q, k, q_labels, k_labels, coeff, margin, gamma, self_mode, chunk)
        return CircleStats(row_loss, argmax, total)
    row_loss, argmax = _CircleRows.apply(q, k, q_labels, k_labels, margin, gamma, self_mode, chunk)
    total = weighted_total(coeff.to(row_loss.dtype), row_loss) if coeff is not None else None
    return CircleStats(row_loss, argmax, total)
