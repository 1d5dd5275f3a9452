"""The row log-sum-exp of z = s * A B^T over B's rows as a differentiable function: the piece from which
losses over several key sets are assembled (sentence-transformers' ranking loss with its directions,
partitions and hardness weighting) without a B x N matrix.

    lse_i = log sum_{j != i + exclude_offset} exp(s * a_i . b_j)

Forward and backward run on the block primitives (`backends.blocks`: the Triton kernels on CUDA, row-chunked
PyTorch elsewhere), so memory is O((M + N) D). Gradients reach A, B and s (a tensor); when `a is b` (one
tensor on both sides, all pairs or all but the diagonal) both sides' terms are taken in one pass.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .backends import blocks
from .backends.base import SOFTMAX, Pairs
from .pair_terms import safe_lse
from .precision import fp32_precision


class _RowLSE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, b, scale, exclude_offset, backend):
        same = a is b
        a = a.contiguous()
        b = a if same else b.contiguous()
        pairs = Pairs(SOFTMAX, exclude_offset, scale.detach().reshape(1), precision=fp32_precision())
        lse = blocks.rows_forward(a, b, pairs, want_best=False, backend=backend).stat1
        ctx.save_for_backward(a, b, scale, lse)
        ctx.same, ctx.pairs, ctx.backend = same, pairs, backend
        return lse

    @staticmethod
    def backward(ctx, grad_lse):
        a, b, scale, lse = ctx.saved_tensors
        term = (safe_lse(lse), None, grad_lse.contiguous())
        if ctx.same:
            da, _, ds = blocks.rows_backward(a, a, ctx.pairs, term, term, backend=ctx.backend)
            return da, None, ds.to(scale.dtype).reshape(scale.shape), None, None
        want_db = ctx.needs_input_grad[1]
        da, db, ds = blocks.rows_backward(a, b, ctx.pairs, term, None, want_db=want_db, backend=ctx.backend)
        return da, db, ds.to(scale.dtype).reshape(scale.shape), None, None


def row_logsumexp(
    a: Tensor, b: Tensor, scale: float | Tensor, *, exclude_offset: int | None = None, backend: str = "auto"
) -> Tensor:
    """lse_i over the rows j of `b` (all of them, or all but j = i + exclude_offset) of s * a_i . b_j, fp32
    (fp64 for fp64 inputs); -inf for a row without candidates."""
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"row_logsumexp: a and b must be 2-D with one dim, got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.dtype != b.dtype or a.device != b.device:
        raise ValueError(
            f"row_logsumexp: a and b differ in dtype or device ({a.dtype}/{b.dtype}, {a.device}/{b.device})"
        )
    dtype = torch.float64 if a.dtype == torch.float64 else torch.float32
    if isinstance(scale, Tensor):
        s = scale.to(device=a.device, dtype=dtype)
    else:
        s = torch.full((), float(scale), dtype=dtype, device=a.device)
    if a is b and exclude_offset not in (None, 0):
        b = a.view_as(a)  # one tensor, but its excluded pairs are not symmetric: take the two sides apart
    return _RowLSE.apply(a, b, s, exclude_offset, backend)
