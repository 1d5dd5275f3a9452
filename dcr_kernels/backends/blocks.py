"""Block primitives for losses whose keys arrive in blocks (a gathered global batch, or a ring of ranks).

`rows_forward(a, b)`: per row i of A, the statistics of S = A B^T over the candidate columns of B (softmax
family: lse_i of z = s S; Circle: LSE over positives and over negatives, docs/design.md "The math"), the
argmax column and the best similarity, so that argmaxes of different blocks can be merged.
`rows_backward(a, b)`: W = d loss / d S from the FINAL statistics and per-row coefficients of A's rows
(row term) and of B's rows (column term: B's rows are loss rows whose candidates include A's rows); returns
dA = W B, optionally dB = W^T A from the same W, and d loss / d s. The pair (i, i + exclude_offset) is never
a candidate: 0 in self mode, a rank's first row for its own block inside a gathered batch.

`backends.select` decides where a call runs: the Triton kernels (`backends.triton.launch`, whose contract
this is) or row-chunked PyTorch in O(chunk x N) memory (CPU, float64, or when asked for).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from ..pair_terms import circle_logits
from . import select
from .base import CIRCLE, SOFTMAX, Pairs, compute_dtype
from .chunked import chunk_rows

BACKENDS = ("auto", "chunked", "triton")
_TEMPORARIES = {SOFTMAX: 6, CIRCLE: 12}  # chunk x N buffers alive at once per loss

Term = tuple[Tensor, Tensor | None, Tensor]  # (stat1, stat2, coefficients), +inf statistics where not counted


class BlockStats(NamedTuple):
    """stat1: softmax lse, or Circle LSE over positives (M,), -inf for an empty set; stat2: Circle LSE over
    negatives, None for softmax; argmax: best candidate column, -1 if none; best: its similarity, -inf if none.
    Statistics are fp32 (fp64 for fp64 inputs)."""

    stat1: Tensor
    stat2: Tensor | None
    argmax: Tensor
    best: Tensor


# deferred imports: the Triton launcher loads only when a kernel runs (Triton is absent off Linux).


def use_triton(a: Tensor, backend: str) -> bool:
    """Whether `backend` sends `a` to the kernels (`backends.select` decides, as for the functional API)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return select(backend, a, "block primitives") == "triton"


def rows_forward(a: Tensor, b: Tensor, pairs: Pairs, *, backend: str = "auto") -> BlockStats:
    """Row statistics of S = a b^T over b's candidate columns (see the module docstring)."""
    if use_triton(a, backend):
        from .triton import launch

        return BlockStats(*launch.rows_forward(a, b, _kernel_pairs(pairs)))
    return _chunked_forward(a, b, pairs)


def rows_backward(
    a: Tensor,
    b: Tensor,
    pairs: Pairs,
    row_term: Term,
    col_term: Term | None,
    *,
    want_db: bool = False,
    backend: str = "auto",
) -> tuple[Tensor, Tensor | None, Tensor]:
    """(dA, dB or None, d loss / d s) for W = d loss / d S built from the row and column terms; dA and dB in
    the inputs' dtypes, dB = W^T A only when `want_db`. When `a is b` both terms are taken in one pass,
    dA is the whole gradient and d loss / d s counts each pair once."""
    if use_triton(a, backend):
        from .triton import launch

        kernel_terms = _kernel_term(row_term), _kernel_term(col_term)
        return launch.pair_grads(a, b, _kernel_pairs(pairs), *kernel_terms, self_mode=a is b, want_db=want_db)
    return _chunked_backward(a, b, pairs, row_term, col_term, want_db)


def _kernel_pairs(pairs: Pairs) -> Pairs:
    """The pairs as the kernels read them: an fp32 scale of one element, int32 labels."""
    scale = None if pairs.scale is None else pairs.scale.detach().reshape(1).float()
    labels = [None if y is None else y.to(torch.int32).contiguous() for y in (pairs.labels_a, pairs.labels_b)]
    return pairs._replace(scale=scale, labels_a=labels[0], labels_b=labels[1])


def _kernel_term(term: Term | None) -> Term | None:
    """(stat1, stat2, coefficients) as the kernels read them: fp32, contiguous."""
    if term is None:
        return None
    s1, s2, coef = term
    return s1.float().contiguous(), None if s2 is None else s2.float().contiguous(), coef.float().contiguous()


def _candidates(rows: int, cols: int, r0: int, exclude_offset: int | None, device: torch.device) -> Tensor | None:
    """Mask of candidate pairs for rows r0 .. r0 + rows: all but (i, i + exclude_offset); None if all are."""
    if exclude_offset is None:
        return None
    valid = torch.ones(rows, cols, dtype=torch.bool, device=device)
    valid.diagonal(r0 + exclude_offset).fill_(False)
    return valid


def _masked(x: Tensor, mask: Tensor | None) -> Tensor:
    return x if mask is None else x.masked_fill(~mask, float("-inf"))


def _and(mask: Tensor | None, other: Tensor) -> Tensor:
    return other if mask is None else mask & other


def _chunk(n_cols: int, loss: int, dtype: torch.dtype) -> int:
    return chunk_rows(n_cols, _TEMPORARIES[loss], torch.finfo(dtype).bits // 8)


def _circle_sets(
    sim: Tensor, valid: Tensor | None, same: Tensor, margin: float, gamma: float
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Circle logits masked to the positives and to the negatives, with their slopes dz/dS."""
    z_pos, z_neg, slope_pos, slope_neg = circle_logits(sim, margin, gamma)
    z_pos = z_pos.masked_fill(~_and(valid, same), float("-inf"))
    z_neg = z_neg.masked_fill(~_and(valid, ~same), float("-inf"))
    return z_pos, z_neg, slope_pos, slope_neg


def _chunked_forward(a: Tensor, b: Tensor, pairs: Pairs) -> BlockStats:
    loss, exclude_offset, scale, labels_a, labels_b, margin, gamma, _ = pairs
    dtype = compute_dtype(a.dtype)
    a, b = a.to(dtype), b.to(dtype)
    m, n = a.shape[0], b.shape[0]
    stat1 = torch.empty(m, dtype=dtype, device=a.device)
    stat2 = torch.empty(m, dtype=dtype, device=a.device) if loss == CIRCLE else None
    argmax = torch.empty(m, dtype=torch.long, device=a.device)
    best = torch.empty(m, dtype=dtype, device=a.device)
    s = None if scale is None else scale.detach().to(dtype).reshape(())
    chunk = _chunk(n, loss, dtype)
    for r0 in range(0, m, chunk):
        rows = slice(r0, r0 + chunk)
        sim = a[rows] @ b.T
        valid = _candidates(sim.shape[0], n, r0, exclude_offset, a.device)
        top, idx = _masked(sim, valid).max(dim=1)
        best[rows], argmax[rows] = top, torch.where(top > float("-inf"), idx, -1)
        if loss == SOFTMAX:
            stat1[rows] = torch.logsumexp(_masked(sim * s, valid), dim=1)
        else:
            same = labels_a[rows, None] == labels_b[None, :]
            z_pos, z_neg, _, _ = _circle_sets(sim, valid, same, margin, gamma)
            stat1[rows], stat2[rows] = torch.logsumexp(z_pos, dim=1), torch.logsumexp(z_neg, dim=1)
    return BlockStats(stat1, stat2, argmax, best)


def _cast_term(term: Term | None, dtype: torch.dtype) -> Term | None:
    return None if term is None else tuple(None if t is None else t.to(dtype) for t in term)


def _tile_terms(row: Term | None, col: Term | None, rows: slice, same_rows: bool) -> list[tuple[Term, bool]]:
    """Each given term as (stat1, stat2, coef) broadcast to a chunk's tile, with whether it adds to d loss / d s
    (when A is B the column term's pairs are the row term's, counted once)."""
    terms = []
    if row is not None:
        terms.append((tuple(None if t is None else t[rows, None] for t in row), True))
    if col is not None:
        terms.append((tuple(None if t is None else t[None, :] for t in col), not same_rows))
    return terms


def _chunked_backward(
    a: Tensor, b: Tensor, pairs: Pairs, row_term: Term, col_term: Term | None, want_db: bool
) -> tuple[Tensor, Tensor | None, Tensor]:
    loss, exclude_offset, scale, labels_a, labels_b, margin, gamma, _ = pairs
    same_rows = a is b
    dtype = compute_dtype(a.dtype)
    out_dtype = a.dtype
    a = a.to(dtype)
    b = a if same_rows else b.to(dtype)
    m, n = a.shape[0], b.shape[0]
    da = torch.empty(m, a.shape[1], dtype=out_dtype, device=a.device)
    db = torch.zeros(n, a.shape[1], dtype=dtype, device=a.device) if want_db and not same_rows else None
    dscale = torch.zeros((), dtype=dtype, device=a.device)
    s = None if scale is None else scale.detach().to(dtype).reshape(())
    row, col = _cast_term(row_term, dtype), _cast_term(col_term, dtype)
    chunk = _chunk(n, loss, dtype)
    for r0 in range(0, m, chunk):
        rows = slice(r0, r0 + chunk)
        sim = a[rows] @ b.T
        valid = _candidates(sim.shape[0], n, r0, exclude_offset, a.device)
        w = torch.zeros_like(sim)
        if loss == SOFTMAX:
            z = _masked(sim * s, valid)
            for (s1, _, coef), adds_to_scale in _tile_terms(row, col, rows, same_rows):
                w_term = coef * torch.exp(z - s1)
                if adds_to_scale:
                    dscale += (w_term * sim).sum()
                w += w_term
            w *= s
        else:
            same = labels_a[rows, None] == labels_b[None, :]
            z_pos, z_neg, slope_pos, slope_neg = _circle_sets(sim, valid, same, margin, gamma)
            for (s1, s2, coef), _ in _tile_terms(row, col, rows, same_rows):
                w += coef * (torch.exp(z_pos - s1) * slope_pos + torch.exp(z_neg - s2) * slope_neg)
        da[rows] = (w @ b).to(out_dtype)
        if db is not None:
            db += w.T @ a[rows]
    return da, (None if db is None else db.to(out_dtype)), dscale
