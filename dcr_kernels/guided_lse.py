"""The row log-sum-exp of z = s * A B^T over the keys a guide model does not flag as false negatives
(GISTEmbed), with the guide's similarities G = A_g B_g^T formed tile by tile beside the model's:

    lse_i = log sum_{j in C(i)} exp(s * a_i . b_j),
    C(i) = {j : G_ij <= threshold_i, or j = i + protect_offset} minus {j = i + exclude_offset}.

The loss is the softmax family with the guide's candidate rule (`backends.tiles.Guide`) in its `Pairs`, on the
block primitives (`backends.blocks`): on CUDA the Triton kernels form G beside S in each tile (a second GEMM
over the guide's dim, in fp32 whatever the model's dtype), elsewhere row chunks in PyTorch; memory is
O((M + N) D) in all, and the backward recomputes S and G. The guide is not differentiated (GISTEmbed computes
it without gradients); A, B and s are.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .backends import blocks
from .backends.base import SOFTMAX, Pairs, compute_dtype
from .backends.tiles import Guide
from .pair_terms import safe_lse
from .precision import fp32_precision


class _GuidedLSE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, b, scale, guide, exclude, backend):
        a, b = a.contiguous(), b.contiguous()
        pairs = Pairs(SOFTMAX, exclude, scale.detach().reshape(1), guide=guide, precision=fp32_precision())
        lse = blocks.rows_forward(a, b, pairs, want_best=False, backend=backend).stat1
        ctx.save_for_backward(a, b, scale, lse)
        ctx.pairs, ctx.backend = pairs, backend
        return lse

    @staticmethod
    def backward(ctx, grad_lse):
        a, b, scale, lse = ctx.saved_tensors
        term = (safe_lse(lse), None, grad_lse.contiguous())
        want_db = ctx.needs_input_grad[1]
        da, db, ds = blocks.rows_backward(a, b, ctx.pairs, term, None, want_db=want_db, backend=ctx.backend)
        return da, db, ds.to(scale.dtype).reshape(scale.shape), None, None, None


def guided_row_logsumexp(
    a: Tensor,
    b: Tensor,
    guide_a: Tensor,
    guide_b: Tensor,
    scale: float | Tensor,
    threshold: Tensor,
    *,
    protect_offset: int | None = None,
    exclude_offset: int | None = None,
    backend: str = "auto",
) -> Tensor:
    """lse_i of s * a_i . b_j over the keys j whose guide similarity guide_a_i . guide_b_j is at most
    threshold_i (plus j = i + protect_offset, always; minus j = i + exclude_offset, never), -inf for a row
    without candidates. Pass normalised rows for cosine similarities."""
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(
            f"guided_row_logsumexp: a and b must be 2-D with one dim, got {tuple(a.shape)}, {tuple(b.shape)}"
        )
    if guide_a.shape[0] != a.shape[0] or guide_b.shape[0] != b.shape[0] or guide_a.shape[1] != guide_b.shape[1]:
        raise ValueError(
            f"guided_row_logsumexp: the guide's rows must pair with the model's: got {tuple(guide_a.shape)} for "
            f"{tuple(a.shape)} and {tuple(guide_b.shape)} for {tuple(b.shape)}"
        )
    if threshold.shape != (a.shape[0],):
        raise ValueError(
            f"guided_row_logsumexp: threshold must have shape ({a.shape[0]},), got {tuple(threshold.shape)}"
        )
    dtype = compute_dtype(a.dtype)
    if isinstance(scale, Tensor):
        s = scale.to(device=a.device, dtype=dtype)
    else:
        s = torch.full((), float(scale), dtype=dtype, device=a.device)
    if a is b:
        b = a.view_as(a)  # one tensor, but the guide's mask is not symmetric: take the two sides apart
    guide = Guide(guide_a.detach(), guide_b.detach(), threshold.detach(), protect_offset)
    return _GuidedLSE.apply(a, b, s, guide, exclude_offset, backend)
