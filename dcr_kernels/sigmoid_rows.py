"""The pairwise sigmoid loss's rows (SigLIP) as a differentiable function over the block primitives:

    L_i = sum_j softplus(-l_ij (t q_i . k_j + b)),  l_ij = +1 for j = positive[i], -1 otherwise,

with gradients for the queries, the keys, the scale t and the bias b (docs/design.md, "The math"). The loss is
one `Pairs` description (the sigmoid family; each row's positive column and the columns' indices as its labels;
(t, b) as its scale), so it runs wherever the block primitives do (`backends.blocks`: the Triton kernels' sigmoid
epilogues on CUDA, row-chunked PyTorch elsewhere), in O((M + N) D) memory.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .backends import blocks
from .backends.base import SIGMOID, Pairs, compute_dtype
from .precision import fp32_precision


class _SigmoidRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, positive, scale, bias, backend):
        q, k = q.contiguous(), k.contiguous()
        tb = torch.stack([scale.detach().reshape(()), bias.detach().reshape(())]).to(compute_dtype(q.dtype))
        columns = torch.arange(k.shape[0], device=q.device)
        pairs = Pairs(SIGMOID, None, tb, positive, columns, precision=fp32_precision())
        rows = blocks.rows_forward(q, k, pairs, want_best=False, backend=backend).stat1
        ctx.save_for_backward(q, k)
        ctx.pairs, ctx.backend, ctx.scalars = pairs, backend, [(x.dtype, x.shape) for x in (scale, bias)]
        return rows

    @staticmethod
    def backward(ctx, grad_rows):
        q, k = ctx.saved_tensors
        term = (torch.zeros_like(grad_rows), None, grad_rows.contiguous())
        want_dk = ctx.needs_input_grad[1]
        dq, dk, dtb = blocks.rows_backward(q, k, ctx.pairs, term, None, want_db=want_dk, backend=ctx.backend)
        dt, db = (g.to(dtype).reshape(shape) for g, (dtype, shape) in zip(dtb, ctx.scalars, strict=True))
        return dq, dk, None, dt, db, None


def sigmoid_rows(
    q: Tensor, k: Tensor, positive: Tensor, scale: Tensor, bias: Tensor, *, backend: str = "auto"
) -> Tensor:
    """sum_j softplus(-l_ij (t q_i . k_j + b)) per row, fp32 (fp64 for fp64 inputs), l_ij = +1 for
    j = positive[i]; differentiable in q, k, the scale t and the bias b (0-dim tensors)."""
    if q is k:
        k = q.view_as(q)  # one tensor on both sides: its key gradient is taken apart, not as self mode's
    return _SigmoidRows.apply(q, k, positive, scale, bias, backend)
