"""Triton backend: fused kernels for CUDA tensors (and CPU tensors under TRITON_INTERPRET=1).

Cost in B^2 D matmul units (one unit = one M x N x D product), from the launches below:
- forward: 1 (one pass over S); the symmetric loss adds 1 for the column statistics (a second pass with
  the roles of queries and keys swapped: deterministic, no atomics, no M x N buffer).
- backward, self mode: 2 (recompute S and write W chunk by chunk; one GEMM dX = W X, since W already
  holds both the row and the column term).
- backward, cross mode (symmetric or not): 3 (recompute S; dQ = W K and dK = W^T Q from the same W).
So the symmetric CLIP loss costs 2 + 3 = 5 units, against Inf-CL's 10; docs/design.md ("Cost model")
adds the HBM traffic of W and predicted times on an H200. The sigmoid loss (SigLIP) costs 1 + 3; it runs on
the same launchers through `dcr_kernels.sigmoid_rows`.
float64 inputs never reach this module: `backends.select` sends them to the chunked backend.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ...pair_terms import circle_row_loss, safe_lse, weighted_total
from ...precision import fp32_precision
from ..base import CIRCLE, SOFTMAX, CircleStats, Pairs, SoftmaxStats, softmax_total
from .launch import pair_grads, rows_forward


def _contiguous(*xs: Tensor) -> list[Tensor]:
    return [x.contiguous() for x in xs]


class _SoftmaxLSE(torch.autograd.Function):
    """Row (and column) log-sum-exp of z = s * Q K^T over the candidates, with fused backward."""

    @staticmethod
    def forward(ctx, q, k, scale, self_mode, columns, want_argmax):
        q, k = _contiguous(q, k)
        s = scale.detach().reshape(1).float()
        diag, precision = 0 if self_mode else None, fp32_precision()
        pairs = Pairs(SOFTMAX, diag, s, precision=precision)
        lse, _, argmax, _ = rows_forward(q, q if self_mode else k, pairs, want_best=want_argmax)
        argmax = _no_argmax(lse) if argmax is None else argmax
        col_lse = torch.empty(0, device=q.device)
        if columns:
            col_lse, _, _, _ = rows_forward(k, q, Pairs(SOFTMAX, None, s, precision=precision), want_best=False)
        ctx.save_for_backward(q, k, s, lse, col_lse)
        ctx.self_mode, ctx.columns, ctx.scale_dtype, ctx.precision = self_mode, columns, scale.dtype, precision
        ctx.mark_non_differentiable(argmax)
        return lse, col_lse, argmax

    @staticmethod
    def backward(ctx, grad_lse, grad_col, _grad_argmax):
        q, k, s, lse, col_lse = ctx.saved_tensors
        row = (safe_lse(lse), None, _coef(grad_lse, lse))
        col = (safe_lse(col_lse), None, _coef(grad_col, col_lse)) if ctx.columns and grad_col is not None else None
        if ctx.self_mode:
            dq, _, ds = pair_grads(q, q, Pairs(SOFTMAX, 0, s, precision=ctx.precision), row, row, self_mode=True)
            return dq, None, ds.to(ctx.scale_dtype), None, None, None
        pairs = Pairs(SOFTMAX, None, s, precision=ctx.precision)
        dq, dk, ds = pair_grads(q, k, pairs, row, col, want_db=ctx.needs_input_grad[1])
        return dq, dk, ds.to(ctx.scale_dtype), None, None, None


def _no_argmax(like: Tensor) -> Tensor:
    """Stands for the argmax output when the kernel did not track it (autograd outputs are tensors)."""
    return torch.empty(0, dtype=torch.int64, device=like.device)


def _coef(grad: Tensor | None, stat: Tensor) -> Tensor:
    return torch.zeros_like(stat) if grad is None else grad.float().contiguous()


class _CircleRows(torch.autograd.Function):
    """Per-row Circle loss softplus(LSE_P + LSE_N) with fused backward."""

    @staticmethod
    def forward(ctx, q, k, q_labels, k_labels, margin, gamma, self_mode, want_argmax):
        q, k = _contiguous(q, k)
        pairs = Pairs(CIRCLE, 0 if self_mode else None, None, q_labels, k_labels, margin, gamma, fp32_precision())
        lse_pos, lse_neg, argmax, _ = rows_forward(q, q if self_mode else k, pairs, want_best=want_argmax)
        argmax = _no_argmax(lse_pos) if argmax is None else argmax
        ctx.save_for_backward(q, k, lse_pos, lse_neg)
        ctx.self_mode, ctx.pairs = self_mode, pairs
        ctx.mark_non_differentiable(argmax)
        return circle_row_loss(lse_pos, lse_neg), argmax

    @staticmethod
    def backward(ctx, grad_rows, _grad_argmax):
        q, k, lse_pos, lse_neg = ctx.saved_tensors
        total = lse_pos + lse_neg
        counted = torch.isfinite(total)
        coef = torch.where(counted, torch.sigmoid(torch.where(counted, total, 0.0)) * grad_rows.float(), 0.0)
        term = (
            torch.where(counted, lse_pos, float("inf")),
            torch.where(counted, lse_neg, float("inf")),
            coef.contiguous(),
        )
        if ctx.self_mode:
            dq, _, _ = pair_grads(q, q, ctx.pairs, term, term, self_mode=True)
            return dq, None, None, None, None, None, None, None
        dq, dk, _ = pair_grads(q, k, ctx.pairs, term, None, want_db=ctx.needs_input_grad[1])
        return dq, dk, None, None, None, None, None, None


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
    lse, col_lse, best = _SoftmaxLSE.apply(q, k, scale, self_mode, columns, argmax)
    col_lse = col_lse if columns else None
    return SoftmaxStats(lse, col_lse, best if argmax else None, softmax_total(lse, col_lse, coeff, col_coeff))


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
    row_loss, best = _CircleRows.apply(q, k, q_labels, k_labels, margin, gamma, self_mode, argmax)
    total = weighted_total(coeff.float(), row_loss) if coeff is not None else None
    return CircleStats(row_loss, best if argmax else None, total)
