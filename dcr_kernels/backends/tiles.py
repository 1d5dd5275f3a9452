"""The block primitives in row-chunked PyTorch: the same contract as the Triton launchers
(`backends.triton.launch.rows_forward` and `pair_grads`), for every loss family and every pair mask.

A loss is described by `Pairs` (docs/design.md, "The math"): its family (softmax, Circle or sigmoid), which
pairs are candidates (all, all but (i, i + exclude_offset), those a guide model does not flag, see `Guide`),
its scale and labels. From that description this module forms, one chunk of rows against all of B at a time
(O(chunk x N) memory):

- the forward's row statistics: softmax lse of z = s S; Circle's LSE over positives and over negatives; the
  sigmoid loss's row sum of softplus(-l (t S + b)); and the most similar candidate with its similarity;
- the backward's W = d loss / d S from the final statistics and per-row coefficients of A's rows (row term)
  and of B's rows (column term), then dA = W B, dB = W^T A and d loss / d scale.

`backends.blocks` sends a call here or to the kernels; the losses over several key blocks (the distributed
strategies, `row_logsumexp`, `guided_row_logsumexp`, `sigmoid_rows`) are written once over that pair.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from ..pair_terms import circle_logits, row_dots, sigmoid_terms
from . import chunked
from .base import CIRCLE, SIGMOID, SOFTMAX, Pairs, compute_dtype
from .chunked import chunk_rows

# chunk x N buffers alive at once per family, and two more for a guide's similarities and mask
_TEMPORARIES = {SOFTMAX: 6, CIRCLE: 12, SIGMOID: 8}
_GUIDE_TEMPORARIES = 2

Term = tuple[Tensor, Tensor | None, Tensor]  # (stat1, stat2, coefficients), +inf statistics where not counted


class BlockStats(NamedTuple):
    """stat1: softmax lse, Circle LSE over positives or the sigmoid row sum (M,), -inf for an empty LSE set;
    stat2: Circle LSE over negatives, else None; argmax: best candidate column, -1 if none; best: its
    similarity, -inf if none (both None when not asked for). Statistics are fp32 (fp64 for fp64 inputs)."""

    stat1: Tensor
    stat2: Tensor | None
    argmax: Tensor | None
    best: Tensor | None


class Guide(NamedTuple):
    """GISTEmbed's candidate rule: pair (i, j) is a candidate when the guide's similarity a_i . b_j is at most
    threshold_i, and always when j = i + protect_offset (the row's own positive)."""

    a: Tensor
    b: Tensor
    threshold: Tensor
    protect_offset: int | None = None


def _chunk(n_cols: int, pairs: Pairs, dtype: torch.dtype) -> int:
    temporaries = _TEMPORARIES[pairs.loss] + (_GUIDE_TEMPORARIES if pairs.guide is not None else 0)
    return chunk_rows(n_cols, temporaries, torch.finfo(dtype).bits // 8)


def _candidates(pairs: Pairs, rows: slice, n_rows: int, n_cols: int, dtype: torch.dtype, device) -> Tensor | None:
    """Mask of the candidate pairs of rows `rows` (None: every pair is one)."""
    valid = None
    guide = pairs.guide
    if guide is not None:
        g = guide.a[rows].to(dtype) @ guide.b.to(dtype).T
        valid = g <= guide.threshold[rows].to(dtype)[:, None]
        if guide.protect_offset is not None:
            valid.diagonal(rows.start + guide.protect_offset).fill_(True)
    if pairs.exclude_offset is not None:
        if valid is None:
            valid = torch.ones(n_rows, n_cols, dtype=torch.bool, device=device)
        valid.diagonal(rows.start + pairs.exclude_offset).fill_(False)
    return valid


def _masked(x: Tensor, mask: Tensor | None, fill: float = float("-inf")) -> Tensor:
    return x if mask is None else x.masked_fill(~mask, fill)


def _same(pairs: Pairs, rows: slice) -> Tensor:
    """Pairs whose labels match: Circle's positives, the sigmoid loss's positive column."""
    return pairs.labels_a[rows, None] == pairs.labels_b[None, :]


def _circle_sets(sim: Tensor, valid: Tensor | None, same: Tensor, pairs: Pairs):
    """Circle logits masked to the positives and to the negatives, with their slopes dz/dS."""
    z_pos, z_neg, slope_pos, slope_neg = circle_logits(sim, pairs.margin, pairs.gamma)
    positives, negatives = (same, ~same) if valid is None else (valid & same, valid & ~same)
    z_pos = z_pos.masked_fill(~positives, float("-inf"))
    z_neg = z_neg.masked_fill(~negatives, float("-inf"))
    return z_pos, z_neg, slope_pos, slope_neg


def _sigmoid_scalars(pairs: Pairs, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    t, b = pairs.scale.detach().to(dtype).reshape(2)
    return t, b


def _fused_softmax(a: Tensor, b: Tensor, pairs: Pairs) -> bool:
    """Whether the chunked backend's fused softmax passes (`chunked._softmax_pass`: in-place exponentials, the
    row factors on chunk x D operands, a fast argmax) compute this call: the softmax family without a guide,
    with every pair a candidate, all but one per row for two tensors or, for one tensor against itself, all but
    the diagonal."""
    return pairs.loss == SOFTMAX and pairs.guide is None and (pairs.exclude_offset in (None, 0) or a is not b)


def _pass_modes(a: Tensor, b: Tensor, pairs: Pairs) -> tuple[bool, int | None]:
    """`chunked._softmax_pass`'s self mode (one tensor, its diagonal excluded) and cross-mode excluded pair."""
    diagonal = a is b and pairs.exclude_offset == 0
    return diagonal, None if a is b else pairs.exclude_offset


def _softmax_scale(pairs: Pairs, dtype: torch.dtype) -> Tensor:
    return pairs.scale.detach().to(dtype).reshape(())


def _fused_forward(a: Tensor, b: Tensor, pairs: Pairs, want_best: bool) -> BlockStats:
    dtype = compute_dtype(a.dtype)
    q = a.to(dtype)
    k = q if a is b else b.to(dtype)
    chunk = chunk_rows(k.shape[0], chunked._SOFTMAX_TEMPORARIES, torch.finfo(dtype).bits // 8)
    diagonal, exclude = _pass_modes(a, b, pairs)
    lse, argmax, _ = chunked._softmax_pass(
        q, k, _softmax_scale(pairs, dtype), diagonal, chunk, g=None, exclude_offset=exclude
    )
    if not want_best:
        return BlockStats(lse, None, None, None)
    best = torch.where(argmax >= 0, row_dots(q, k[argmax.clamp(min=0)]), float("-inf"))
    return BlockStats(lse, None, argmax, best)


def _fused_backward(
    a: Tensor, b: Tensor, pairs: Pairs, row: Term, col: Term | None, want_db: bool
) -> tuple[Tensor, Tensor | None, Tensor]:
    """The softmax backward by `chunked._softmax_pass` from the given statistics. For one tensor against itself
    the column term, when given, is the row term read by columns: the pass takes the row term alone and the one
    gradient gets both W X and W^T X (chunked's self mode adds both to it)."""
    dtype = compute_dtype(a.dtype)
    same = a is b
    q = a.to(dtype)
    k = q if same else b.to(dtype)
    (s1, _, coef), cols = _cast_term(row, dtype), None if same else _cast_term(col, dtype)
    chunk = chunk_rows(k.shape[0], chunked._SOFTMAX_TEMPORARIES, torch.finfo(dtype).bits // 8)
    diagonal, exclude = _pass_modes(a, b, pairs)
    _, _, grads = chunked._softmax_pass(
        q, k, _softmax_scale(pairs, dtype), diagonal, chunk, g=coef, lse=s1,
        col_lse=None if cols is None else cols[0], col_g=None if cols is None else cols[2], exclude_offset=exclude,
    )  # fmt: skip
    if not same:
        return grads.dq.to(a.dtype), grads.dk.to(b.dtype) if want_db else None, grads.ds
    da = grads.dq if diagonal or col is None else grads.dq + grads.dk
    return da.to(a.dtype), None, grads.ds


def _plain_sigmoid(a: Tensor, b: Tensor, pairs: Pairs, want_best: bool = False) -> bool:
    """Whether the sigmoid loss's pass without masks computes this call: every pair a candidate, two tensors."""
    unmasked = pairs.exclude_offset is None and pairs.guide is None
    return pairs.loss == SIGMOID and unmasked and a is not b and not want_best


def _sigmoid_chunks(a: Tensor, b: Tensor, pairs: Pairs):
    """(rows, z, pos) per row chunk, z = t S + b in one buffer reused across chunks, pos the positive pairs."""
    dtype = compute_dtype(a.dtype)
    q, k = a.to(dtype), b.to(dtype)
    t, bias = _sigmoid_scalars(pairs, dtype)
    chunk = chunk_rows(k.shape[0], 3, torch.finfo(dtype).bits // 8)
    buffer = torch.empty(min(chunk, q.shape[0]), k.shape[0], dtype=dtype, device=q.device)
    for r0 in range(0, q.shape[0], chunk):
        rows = slice(r0, min(r0 + chunk, q.shape[0]))
        z = torch.mm(q[rows] * t, k.T, out=buffer[: rows.stop - r0]).add_(bias)
        yield rows, z, _same(pairs, rows)


def _sigmoid_forward(a: Tensor, b: Tensor, pairs: Pairs) -> BlockStats:
    """Row sums of softplus(-l z) as sum_j softplus(z_ij) - sum_(j positive) z_ij, since softplus(-x) =
    softplus(x) - x: one softplus per pair and no sign flips."""
    out = torch.empty(a.shape[0], dtype=compute_dtype(a.dtype), device=a.device)
    for rows, z, pos in _sigmoid_chunks(a, b, pairs):
        positives = torch.where(pos, z, 0.0).sum(dim=1)
        out[rows] = -torch.nn.functional.logsigmoid(z.neg_()).sum(dim=1) - positives  # softplus(z) = -logsigmoid(-z)
    return BlockStats(out, None, None, None)


def _sigmoid_backward(a: Tensor, b: Tensor, pairs: Pairs, coef: Tensor, want_db: bool):
    """W = t g (sigmoid(z) - [j positive]) from the chunk's own buffer; d loss / d t = sum_i g_i q_i . (P K)_i
    and d loss / d b = sum_i g_i sum_j P_ij with P the slopes, so S is never kept beside them."""
    dtype = compute_dtype(a.dtype)
    q, k = a.to(dtype), b.to(dtype)
    t, _ = _sigmoid_scalars(pairs, dtype)
    g = coef.to(dtype)
    da = torch.empty_like(q)
    db = torch.zeros_like(k) if want_db else None
    dt, dbias = torch.zeros((), dtype=dtype, device=a.device), torch.zeros((), dtype=dtype, device=a.device)
    for rows, z, pos in _sigmoid_chunks(a, b, pairs):
        slope = z.sigmoid_().sub_(pos.to(dtype))  # d softplus(-l z) / dz
        pk = slope @ k
        dt += (g[rows] * row_dots(q[rows], pk)).sum()
        dbias += (g[rows] * slope.sum(dim=1)).sum()
        da[rows] = (t * g[rows])[:, None] * pk
        if db is not None:
            db.addmm_(slope.T, q[rows] * (t * g[rows])[:, None])
    return da.to(a.dtype), None if db is None else db.to(b.dtype), torch.stack([dt, dbias])


def rows_forward(a: Tensor, b: Tensor, pairs: Pairs, *, want_best: bool = True) -> BlockStats:
    """Row statistics of S = a b^T over b's candidate columns (see the module docstring); argmax and best are
    None unless `want_best`."""
    if _fused_softmax(a, b, pairs):
        return _fused_forward(a, b, pairs, want_best)
    if _plain_sigmoid(a, b, pairs, want_best):
        return _sigmoid_forward(a, b, pairs)
    dtype = compute_dtype(a.dtype)
    a, b = a.to(dtype), b.to(dtype)
    m, n = a.shape[0], b.shape[0]
    stat1 = torch.empty(m, dtype=dtype, device=a.device)
    stat2 = torch.empty(m, dtype=dtype, device=a.device) if pairs.loss == CIRCLE else None
    argmax = torch.empty(m, dtype=torch.long, device=a.device) if want_best else None
    best = torch.empty(m, dtype=dtype, device=a.device) if want_best else None
    chunk = _chunk(n, pairs, dtype)
    for r0 in range(0, m, chunk):
        rows = slice(r0, min(r0 + chunk, m))
        sim = a[rows] @ b.T
        valid = _candidates(pairs, rows, sim.shape[0], n, dtype, a.device)
        if want_best:
            top, idx = _masked(sim, valid).max(dim=1)
            best[rows], argmax[rows] = top, torch.where(top > float("-inf"), idx, -1)
        if pairs.loss == SOFTMAX:
            stat1[rows] = torch.logsumexp(_masked(sim * pairs.scale.detach().to(dtype).reshape(()), valid), dim=1)
        elif pairs.loss == CIRCLE:
            z_pos, z_neg, _, _ = _circle_sets(sim, valid, _same(pairs, rows), pairs)
            stat1[rows], stat2[rows] = torch.logsumexp(z_pos, dim=1), torch.logsumexp(z_neg, dim=1)
        else:
            t, bias = _sigmoid_scalars(pairs, dtype)
            terms, _ = sigmoid_terms(t * sim + bias, _same(pairs, rows))
            stat1[rows] = _masked(terms, valid, 0.0).sum(dim=1)
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


def rows_backward(
    a: Tensor, b: Tensor, pairs: Pairs, row_term: Term, col_term: Term | None, want_db: bool
) -> tuple[Tensor, Tensor | None, Tensor]:
    """(dA, dB or None, d loss / d scale) for W built from the row and column terms (`backends.blocks`).
    d loss / d scale is 0-dim for softmax (s) and Circle (none: 0), a 2-vector (t, b) for sigmoid."""
    one_pass = a is not b or col_term is row_term or (col_term is None and pairs.exclude_offset is None)
    if _fused_softmax(a, b, pairs) and one_pass:
        return _fused_backward(a, b, pairs, row_term, col_term, want_db)
    if _plain_sigmoid(a, b, pairs) and col_term is None:
        return _sigmoid_backward(a, b, pairs, row_term[2], want_db)
    same_rows = a is b
    dtype = compute_dtype(a.dtype)
    out_dtype = a.dtype
    a = a.to(dtype)
    b = a if same_rows else b.to(dtype)
    m, n = a.shape[0], b.shape[0]
    da = torch.empty(m, a.shape[1], dtype=out_dtype, device=a.device)
    db = torch.zeros(n, a.shape[1], dtype=dtype, device=a.device) if want_db and not same_rows else None
    dscale = torch.zeros(2 if pairs.loss == SIGMOID else (), dtype=dtype, device=a.device)
    row, col = _cast_term(row_term, dtype), _cast_term(col_term, dtype)
    chunk = _chunk(n, pairs, dtype)
    for r0 in range(0, m, chunk):
        rows = slice(r0, min(r0 + chunk, m))
        sim = a[rows] @ b.T
        valid = _candidates(pairs, rows, sim.shape[0], n, dtype, a.device)
        w = torch.zeros_like(sim)
        if pairs.loss == SOFTMAX:
            s = pairs.scale.detach().to(dtype).reshape(())
            z = _masked(sim * s, valid)
            for (s1, _, coef), adds_to_scale in _tile_terms(row, col, rows, same_rows):
                w_term = coef * torch.exp(z - s1)
                if adds_to_scale:
                    dscale += (w_term * sim).sum()
                w += w_term
            w *= s
        elif pairs.loss == CIRCLE:
            z_pos, z_neg, slope_pos, slope_neg = _circle_sets(sim, valid, _same(pairs, rows), pairs)
            for (s1, s2, coef), _ in _tile_terms(row, col, rows, same_rows):
                w += coef * (torch.exp(z_pos - s1) * slope_pos + torch.exp(z_neg - s2) * slope_neg)
        else:
            t, bias = _sigmoid_scalars(pairs, dtype)
            _, slope = sigmoid_terms(t * sim + bias, _same(pairs, rows))
            for (_, _, coef), adds_to_scale in _tile_terms(row, col, rows, same_rows):
                g = _masked(coef * slope, valid, 0.0)  # d loss / d z
                if adds_to_scale:
                    dscale += torch.stack([(g * sim).sum(), g.sum()])
                w += g
            w *= t
        da[rows] = (w @ b).to(out_dtype)
        if db is not None:
            db += w.T @ a[rows]
    return da, (None if db is None else db.to(out_dtype)), dscale
