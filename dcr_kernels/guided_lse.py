"""The row log-sum-exp of z = s * A B^T over the keys a guide model does not flag as false negatives
(GISTEmbed), with the guide's similarities G = A_g B_g^T formed tile by tile beside the model's:

    lse_i = log sum_{j in C(i)} exp(s * a_i . b_j),
    C(i) = {j : G_ij <= threshold_i, or j = i + protect_offset} minus {j = i + exclude_offset}.

Rows are taken in chunks (`backends.chunked.chunk_rows`), so memory is O(chunk x N) for S and G and
O((M + N) D) in all, on any device; the backward recomputes each chunk's S and G. The guide is not
differentiated (GISTEmbed computes it without gradients); A, B and s are.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .backends.base import compute_dtype
from .backends.chunked import chunk_rows

_TEMPORARIES = 5  # chunk x N buffers alive at once: S, G, the mask, z and the weights


def _candidates(g: Tensor, threshold: Tensor, r0: int, protect: int | None, exclude: int | None) -> Tensor:
    """Candidate mask of one chunk of rows starting at row r0."""
    keep = g <= threshold[:, None]
    if protect is not None:
        keep.diagonal(r0 + protect).fill_(True)
    if exclude is not None:
        keep.diagonal(r0 + exclude).fill_(False)
    return keep


class _GuidedLSE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, b, guide_a, guide_b, scale, threshold, protect, exclude):
        dtype = compute_dtype(a.dtype)
        s = scale.detach().to(dtype)
        m, n = a.shape[0], b.shape[0]
        chunk = chunk_rows(n, _TEMPORARIES, torch.finfo(dtype).bits // 8)
        lse = torch.empty(m, dtype=dtype, device=a.device)
        for r0 in range(0, m, chunk):
            rows = slice(r0, r0 + chunk)
            g = guide_a[rows].to(dtype) @ guide_b.to(dtype).T
            keep = _candidates(g, threshold[rows].to(dtype), r0, protect, exclude)
            z = (s * (a[rows].to(dtype) @ b.to(dtype).T)).masked_fill(~keep, float("-inf"))
            lse[rows] = torch.logsumexp(z, dim=1)
        ctx.save_for_backward(a, b, guide_a, guide_b, scale, threshold, lse)
        ctx.protect, ctx.exclude, ctx.chunk = protect, exclude, chunk
        return lse

    @staticmethod
    def backward(ctx, grad_lse):
        a, b, guide_a, guide_b, scale, threshold, lse = ctx.saved_tensors
        dtype = lse.dtype
        s = scale.detach().to(dtype)
        ad, bd = a.to(dtype), b.to(dtype)
        da, db = torch.zeros_like(ad), torch.zeros_like(bd)
        ds = torch.zeros((), dtype=dtype, device=a.device)
        counted = torch.isfinite(lse)
        coef = torch.where(counted, grad_lse.to(dtype), 0.0)
        base = torch.where(counted, lse, 0.0)
        for r0 in range(0, a.shape[0], ctx.chunk):
            rows = slice(r0, r0 + ctx.chunk)
            g = guide_a[rows].to(dtype) @ guide_b.to(dtype).T
            keep = _candidates(g, threshold[rows].to(dtype), r0, ctx.protect, ctx.exclude)
            sim = ad[rows] @ bd.T
            p = torch.exp(s * sim - base[rows, None]).masked_fill(~keep, 0.0) * coef[rows, None]
            ds += (p * sim).sum()
            w = s * p
            da[rows] = w @ bd
            db += w.T @ ad[rows]
        return da.to(a.dtype), db.to(b.dtype), None, None, ds.to(scale.dtype).reshape(scale.shape), None, None, None


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
    guide_a, guide_b, threshold = guide_a.detach(), guide_b.detach(), threshold.detach()
    return _GuidedLSE.apply(a, b, guide_a, guide_b, s, threshold, protect_offset, exclude_offset)
