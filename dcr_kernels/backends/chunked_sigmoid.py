"""The pairwise sigmoid loss (SigLIP) on row chunks: per-row sums of softplus(-l_ij (t S_ij + b)) over every
key, with gradients for the queries, the keys, the scale t and the bias b (docs/design.md, "The math").

Rows are taken in chunks against all N keys (`chunked.chunk_rows`), so memory is O(chunk x N); the
backward recomputes each chunk. Runs on any device; the Triton backend has its own (`backends/triton`,
the kernels' sigmoid epilogues).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..pair_terms import sigmoid_terms
from .base import compute_dtype
from .chunked import chunk_rows

_TEMPORARIES = 4  # the chunk's similarities, logits, terms and slopes


def _positive_mask(positive: Tensor, rows: slice, n: int) -> Tensor:
    return positive[rows, None] == torch.arange(n, device=positive.device)[None, :]


class _SigmoidRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, positive, scale, bias):
        dtype = compute_dtype(q.dtype)
        qd, kd = q.to(dtype), k.to(dtype)
        t, b = scale.detach().to(dtype), bias.detach().to(dtype)
        m, n = q.shape[0], k.shape[0]
        chunk = chunk_rows(n, _TEMPORARIES, torch.finfo(dtype).bits // 8)
        rows_out = torch.empty(m, dtype=dtype, device=q.device)
        for r0 in range(0, m, chunk):
            rows = slice(r0, r0 + chunk)
            terms, _ = sigmoid_terms(t * (qd[rows] @ kd.T) + b, _positive_mask(positive, rows, n))
            rows_out[rows] = terms.sum(dim=1)
        ctx.save_for_backward(q, k, positive, scale, bias)
        ctx.chunk = chunk
        return rows_out

    @staticmethod
    def backward(ctx, grad_rows):
        q, k, positive, scale, bias = ctx.saved_tensors
        dtype = compute_dtype(q.dtype)
        qd, kd = q.to(dtype), k.to(dtype)
        t, b = scale.detach().to(dtype), bias.detach().to(dtype)
        n = k.shape[0]
        dq, dk = torch.empty_like(qd), torch.zeros_like(kd)
        dt = torch.zeros((), dtype=dtype, device=q.device)
        db = torch.zeros((), dtype=dtype, device=q.device)
        for r0 in range(0, q.shape[0], ctx.chunk):
            rows = slice(r0, r0 + ctx.chunk)
            sim = qd[rows] @ kd.T
            _, slope = sigmoid_terms(t * sim + b, _positive_mask(positive, rows, n))
            g = slope * grad_rows[rows, None].to(dtype)  # d loss / d z
            dt += (g * sim).sum()
            db += g.sum()
            w = t * g
            dq[rows] = w @ kd
            dk += w.T @ qd[rows]
        return (
            dq.to(q.dtype),
            dk.to(k.dtype),
            None,
            dt.to(scale.dtype).reshape(scale.shape),
            db.to(bias.dtype).reshape(bias.shape),
        )


def sigmoid_rows(q: Tensor, k: Tensor, positive: Tensor, scale: Tensor, bias: Tensor) -> Tensor:
    """sum_j softplus(-l_ij (t q_i . k_j + b)) per row, l_ij = +1 for j = positive[i]; differentiable in q, k,
    the scale t and the bias b (0-dim tensors)."""
    return _SigmoidRows.apply(q, k, positive, scale, bias)
