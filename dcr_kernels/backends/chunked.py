"""Row-chunked PyTorch backend: the CPU backend and the fallback everywhere.

Rows are processed in chunks of `chunk` rows against all N keys, so the peak extra memory is
O(chunk x N) and no M x N buffer ever exists. The chunk size comes from a memory budget
(`DCR_CHUNK_BYTES`; by default 16 MiB, but at least 64 rows). When the caller passes reduction
coefficients (mean or sum), the gradients are computed in the same pass as the loss, while each chunk is
hot, and the backward only rescales them; with per-row outputs (reduction "none") the backward
recomputes the chunks. The reduced InfoNCE loss goes one step further (`info_nce_total`): it takes the raw
embeddings, normalises them, adds the positive logits' gradients and carries every gradient back through
the normalisation inside the forward, so that what outlives the forward is one gradient per input, which
the backward hands to autograd without a copy.
Cost in B^2 D matmul units: fused forward+backward 3 (S, W K, W^T Q), plus 1 for the column statistics
of the symmetric loss; the per-row path spends 1 forward and 3 backward. On CPU the elementwise work per
chunk entry is kept to a few in-place passes, so the matrix products dominate.
"""

from __future__ import annotations

import functools
import os

import torch
from torch import Tensor

from ..losses import circle_row_loss, row_dots, safe_lse, weighted_total
from .base import CircleStats, SoftmaxStats, compute_dtype

DEFAULT_CHUNK_BYTES = 16 << 20
MIN_DEFAULT_ROWS = 64
_SOFTMAX_TEMPORARIES = 2  # the chunk's scores (exponentiated in place), the column term of the symmetric loss
_CIRCLE_TEMPORARIES = 2  # the chunk's similarities (then logits, then d loss / dS) and slopes
_ARGMAX_BLOCK = 64
# Exponents are clamped here: exp(-60) is 1e-26 of a row's largest term, so no sum or gradient changes
# beyond rounding, and exp stays off its slow paths (out-of-range inputs, subnormal results: 20-70x slower).
_EXP_FLOOR = -60.0
_NORM_EPS = 1e-12  # F.normalize's default


def chunk_rows(n_cols: int, temporaries: int, itemsize: int, budget: int | None = None) -> int:
    """Rows per chunk so that `temporaries` buffers of chunk x n_cols elements fit in the budget.

    The budget is `DCR_CHUNK_BYTES` when set (then honoured down to one-row chunks). The default is a
    small, cache-friendly working set, but never fewer than MIN_DEFAULT_ROWS rows: thinner chunks make
    the matrix products re-read K and rewrite dK for too little work each time."""
    if budget is None:
        explicit = os.environ.get("DCR_CHUNK_BYTES")
        if explicit is None:
            rows = DEFAULT_CHUNK_BYTES // max(1, n_cols * temporaries * itemsize)
            return max(MIN_DEFAULT_ROWS, rows)
        budget = int(explicit)
    return max(1, budget // max(1, n_cols * temporaries * itemsize))


class _Grads:
    """fp32 (fp64) gradient accumulators for queries, keys and the scale."""

    def __init__(self, q: Tensor, k: Tensor, self_mode: bool):
        self.self_mode = self_mode
        self.dq = torch.zeros_like(q)
        self.dk = self.dq if self_mode else torch.zeros_like(k)
        self.ds = torch.zeros((), dtype=q.dtype, device=q.device)

    def add_chunk(self, r0: int, w: Tensor, qb: Tensor, k: Tensor, row_scale: Tensor) -> Tensor:
        """dQ_rows += diag(r) W K and dK += W^T diag(r) Q_rows, for d loss / d S = diag(r) W of one row
        chunk; the row scale r multiplies chunk x D operands, never the chunk x N matrix. Returns W K."""
        wk = w @ k
        self.dq[r0 : r0 + qb.shape[0]].addcmul_(wk, row_scale[:, None])
        self.dk.addmm_(w.T, qb * row_scale[:, None])
        return wk


def _row_max(z: Tensor) -> tuple[Tensor, Tensor]:
    """Row maximum and its index (-1 for a row of -inf). On CPU a max with indices over long rows costs
    ten times a plain max, so the row is read once as blocks of _ARGMAX_BLOCK columns, reducing across
    the blocks (a vectorised max per column position); only the winning position is searched again."""
    n = z.shape[1]
    width = n // _ARGMAX_BLOCK * _ARGMAX_BLOCK
    if width == 0:
        best, idx = z.max(dim=1)
    else:
        best, lane = z[:, :width].unflatten(1, (-1, _ARGMAX_BLOCK)).amax(dim=1).max(dim=1)
        cols = lane[:, None] + torch.arange(0, width, _ARGMAX_BLOCK, device=z.device)
        idx = cols.gather(1, z.gather(1, cols).argmax(dim=1, keepdim=True)).squeeze(1)
        if width < n:
            tail_best, tail_idx = z[:, width:].max(dim=1)
            later = tail_best > best
            best, idx = torch.where(later, tail_best, best), torch.where(later, tail_idx + width, idx)
    return best, torch.where(best > float("-inf"), idx, -1)


def _exp_needs_shift(q: Tensor, k: Tensor, s: Tensor) -> bool:
    """Whether exp(z) must be taken after subtracting the row max. |z_ij| <= s |q_i| |k_j|; while that
    bound is within -_EXP_FLOOR, exp(z) is a normal number and a row sum of up to 10^12 terms cannot
    overflow, so two passes over each chunk (subtract, clamp) are saved."""
    norms = [float(torch.linalg.vector_norm(x, dim=1).max()) for x in (q, k)]
    return not abs(float(s)) * norms[0] * norms[1] <= -_EXP_FLOOR


def _workspace(count: int, rows: int, like: Tensor, cols: int) -> list[Tensor]:
    """Buffers of rows x cols that every chunk of a pass reuses: one allocation per pass instead of several
    per chunk, so no chunk faults in fresh pages and the allocator holds no freed chunks resident."""
    return [torch.empty(rows, cols, dtype=like.dtype, device=like.device) for _ in range(count)]


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
    given, accumulates the gradients of sum_i g_i lse_i + sum_j col_g_j col_lse_j.

    Each chunk x N matrix is one buffer, touched as few times as possible while it is hot: the scale is
    folded into the query rows, exp(z - max) is taken in place, and the row factors of the gradient
    (g, s, 1 / row sum) multiply chunk x D operands instead of the chunk x N matrix."""
    m = q.shape[0]
    out_lse = torch.empty(m, dtype=q.dtype, device=q.device) if lse is None else lse
    argmax = torch.empty(m, dtype=torch.long, device=q.device)
    grads = _Grads(q, k, self_mode) if g is not None else None
    col_base = safe_lse(col_lse)[None, :] if col_g is not None else None
    shift = lse is None and m > 0 and _exp_needs_shift(q, k, s)
    (scores,) = _workspace(1, min(chunk, m), q, k.shape[0])
    for r0 in range(0, m, chunk):
        rows = slice(r0, r0 + chunk)
        qb = q[rows]
        z = torch.mm(qb * s, k.T, out=scores[: qb.shape[0]])
        if self_mode:
            z.diagonal(r0).fill_(float("-inf"))
        col_w = None
        if grads is not None and col_base is not None:
            col_w = (z - col_base).clamp_(min=_EXP_FLOOR).exp_().mul_(col_g[None, :])
        if lse is None:
            best, argmax[rows] = _row_max(z)
            found = best > float("-inf")
            base = torch.where(found, best, 0.0) if shift else torch.zeros_like(best)
            if shift:
                z.sub_(base[:, None]).clamp_(min=_EXP_FLOOR)
            total = z.exp_().sum(dim=1)
            out_lse[rows] = torch.where(found, base + total.log(), float("-inf"))
            factor = None if grads is None else torch.where(found, g[rows] / total, 0.0)
        elif grads is not None:
            row_lse = lse[rows]
            z.sub_(safe_lse(row_lse)[:, None]).clamp_(min=_EXP_FLOOR).exp_()
            factor = torch.where(torch.isfinite(row_lse), g[rows], 0.0)
        if grads is None:
            continue
        if col_w is not None:
            z = col_w.addcmul_(z, factor[:, None])
            factor = torch.ones_like(factor)
        zk = grads.add_chunk(r0, z, qb, k, s * factor)
        grads.ds += (factor * (qb * zk).sum(dim=1)).sum()
    return out_lse, argmax, grads


def _column_lse(q: Tensor, k: Tensor, s: Tensor, chunk: int) -> Tensor:
    """Column log-sum-exp of z = s * Q K^T (cross mode), merged over row chunks."""
    col = torch.full((k.shape[0],), float("-inf"), dtype=q.dtype, device=q.device)
    for r0 in range(0, q.shape[0], chunk):
        col = torch.logaddexp(col, torch.logsumexp((q[r0 : r0 + chunk] @ k.T) * s, dim=0))
    return col


def _label_runs(labels: Tensor) -> list[tuple[int, int, int]]:
    """(label, first row, end row) of each run of equal labels in a sorted label vector."""
    values, counts = torch.unique_consecutive(labels, return_counts=True)
    ends = counts.cumsum(0).tolist()
    return [(y, e - c, e) for y, c, e in zip(values.tolist(), counts.tolist(), ends, strict=True)]


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
    sum_i g_i L_i.

    Queries and keys are sorted by label, so that the positives of a run of rows with one label are one
    block of consecutive columns: no label mask is ever formed. With v = S on negatives and v = 1 - S on
    positives, both sets' logits are z = gamma (w^2 - m^2) with w = max(v, -m), and the slope dz/dS is
    +-gamma (w + m). Each chunk is scored as if every pair were negative; the positive blocks (a small
    part of the chunk) are then recomputed, exponentiated against their own maximum, and set aside, so
    that every entry is exponentiated once. Results are returned in the callers' order."""
    m, n = q.shape[0], k.shape[0]
    q_labels, q_perm = torch.sort(q_labels, stable=True)
    k_labels, k_perm = (q_labels, q_perm) if self_mode else torch.sort(k_labels, stable=True)
    q, g = q[q_perm], None if g is None else g[q_perm]
    k = q if self_mode else k[k_perm]
    counts = torch.bincount(k_labels, minlength=int(max(q_labels[-1], k_labels[-1])) + 1)
    k_end, k_count = counts.cumsum(0).tolist(), counts.tolist()
    n_same = counts[q_labels]
    has_pos, has_neg = n_same > int(self_mode), n_same < n
    runs = [(r0, r1, k_end[y] - k_count[y], k_end[y]) for y, r0, r1 in _label_runs(q_labels)]
    runs = [run for run in runs if run[3] - run[2] > int(self_mode)]  # the rows have positives
    row_loss = torch.empty(m, dtype=q.dtype, device=q.device)
    argmax = torch.empty(m, dtype=torch.long, device=q.device)
    grads = _Grads(q, k, self_mode) if g is not None else None
    shift = gamma * margin * margin  # z = gamma w^2 - shift
    sims, slopes = _workspace(2, min(chunk, m), q, n)
    for r0 in range(0, m, chunk):
        rows = slice(r0, r0 + chunk)
        qb = q[rows]
        r1 = r0 + qb.shape[0]
        sim, slope = sims[: qb.shape[0]], slopes[: qb.shape[0]]
        torch.mm(qb, k.T, out=sim)
        if self_mode:
            sim.diagonal(r0).fill_(float("-inf"))
        argmax[rows] = _row_max(sim)[1]
        if self_mode:
            sim.diagonal(r0).fill_(0.0)  # any finite value: the pair is excluded below
        blocks = [(max(a, r0) - r0, min(b, r1) - r0, c0, c1) for a, b, c0, c1 in runs if a < r1 and b > r0]
        torch.clamp(sim, min=-margin, out=slope)
        for a, b, c0, c1 in blocks:
            torch.clamp(1.0 - sim[a:b, c0:c1], min=-margin, out=slope[a:b, c0:c1])
        z = torch.addcmul(sim.new_zeros(()), slope, slope, value=gamma, out=sim)  # z + shift
        if self_mode:
            z.diagonal(r0).fill_(float("-inf"))
        pos_top, pos_total = torch.zeros_like(qb[:, 0]), torch.ones_like(qb[:, 0])
        pos_exp = []
        for a, b, c0, c1 in blocks:
            block = z[a:b, c0:c1]
            pos_top[a:b] = block.amax(dim=1)
            pos_exp.append(block.sub(pos_top[a:b, None]).clamp_(min=_EXP_FLOOR).exp_())
            pos_total[a:b] = pos_exp[-1].sum(dim=1)
            block.fill_(float("-inf"))
        valid_pos, valid_neg = has_pos[rows], has_neg[rows]
        neg_top = torch.where(valid_neg, z.amax(dim=1), 0.0)
        neg_total = z.sub_(neg_top[:, None]).clamp_(min=_EXP_FLOOR).exp_().sum(dim=1)  # exp(z - max), ~0 on P
        lse_pos = torch.where(valid_pos, pos_top + pos_total.log() - shift, float("-inf"))
        lse_neg = torch.where(valid_neg, neg_top + neg_total.log() - shift, float("-inf"))
        row_loss[rows] = circle_row_loss(lse_pos, lse_neg)
        if grads is None:
            continue
        # d L_i / d S_ij = c_i softmax within the entry's set x slope; c_i gamma / (negatives' sum) is the
        # row scale, so the positive blocks are multiplied by -(negatives' sum) / (positives' sum)
        both = lse_pos + lse_neg
        coef = torch.where(torch.isfinite(both), torch.sigmoid(both) * g[rows], 0.0)
        scale = torch.where(valid_neg, coef * gamma / neg_total, 0.0)
        ratio = -neg_total / pos_total
        dsim = z.mul_(slope.add_(margin))
        for (a, b, c0, c1), block in zip(blocks, pos_exp, strict=True):
            torch.mul(block, slope[a:b, c0:c1], out=dsim[a:b, c0:c1]).mul_(ratio[a:b, None])
        if self_mode:
            dsim.diagonal(r0).fill_(0.0)
        grads.add_chunk(r0, dsim, qb, k, scale)
    return _unsorted(row_loss, argmax, grads, q_perm, k_perm)


def _unsorted(
    row_loss: Tensor, argmax: Tensor, grads: _Grads | None, q_perm: Tensor, k_perm: Tensor
) -> tuple[Tensor, Tensor, _Grads | None]:
    """Row results and gradients of inputs sorted by `q_perm` and `k_perm`, back in the inputs' order."""
    argmax = torch.where(argmax >= 0, k_perm[argmax.clamp(min=0)], -1)
    out_loss, out_argmax = torch.empty_like(row_loss), torch.empty_like(argmax)
    out_loss[q_perm], out_argmax[q_perm] = row_loss, argmax
    if grads is not None:
        dq = torch.empty_like(grads.dq).index_copy_(0, q_perm, grads.dq)
        grads.dk = dq if grads.self_mode else torch.empty_like(grads.dk).index_copy_(0, k_perm, grads.dk)
        grads.dq = dq
    return out_loss, out_argmax, grads


def _upcast(q: Tensor, k: Tensor, self_mode: bool) -> tuple[Tensor, Tensor]:
    dtype = compute_dtype(q.dtype)
    qc = q.to(dtype)
    return qc, (qc if self_mode else k.to(dtype))


def _scaled(grad: Tensor, factor: Tensor | None, dtype: torch.dtype) -> Tensor:
    """grad * factor in `dtype`. When that changes nothing (`loss.backward()` passes exactly 1) and no graph
    of the backward is recorded, `grad` itself is returned, which saves a copy of the size of the input."""
    if grad.dtype == dtype and not torch.is_grad_enabled() and (factor is None or bool(factor == 1)):
        return grad
    return (grad * (1.0 if factor is None else factor)).to(dtype)


def _cast_grads(
    needs: tuple[bool, ...], grads: _Grads, q: Tensor, k: Tensor, self_mode: bool, scale: Tensor, factor=None
):
    """Return (dq, dk, dscale) in the inputs' dtypes, scaled by `factor` (an upstream scalar); `needs` says
    which of the three are wanted."""
    dq = _scaled(grads.dq, factor, q.dtype) if needs[0] else None
    dk = None
    if not self_mode and needs[1]:
        dk = _scaled(grads.dk, factor, k.dtype)
    f = 1.0 if factor is None else factor
    ds = (grads.ds * f).to(scale.dtype).reshape(scale.shape) if needs[2] else None
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
            qc,
            kc,
            scale.to(qc.dtype),
            ctx.self_mode,
            ctx.chunk,
            g=g.to(qc.dtype),
            lse=lse,
            col_lse=col_lse if col_g is not None else None,
            col_g=None if col_g is None else col_g.to(qc.dtype),
        )
        return (*_cast_grads(ctx.needs_input_grad, grads, q, k, ctx.self_mode, scale), None, None, None)


def _take_grads(ctx) -> _Grads:
    """The gradients computed in the forward: handed on the first time, so that autograd can adopt them as the
    inputs' .grad without a copy; a second backward through a retained graph recomputes them."""
    grads, ctx.grads = ctx.grads, None
    return grads if grads is not None else ctx.recompute()[-1]


def _softmax_fused(q, k, scale, self_mode, chunk, coeff, col_coeff):
    """(total, lse, col_lse, argmax, grads) of sum_i c_i lse_i (+ columns)."""
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
    return total, lse, col_lse, argmax, grads


class _SoftmaxFused(torch.autograd.Function):
    """A weighted total of the softmax family whose gradients `compute(q, k, scale, self_mode, ...)` forms in
    the forward pass (`_softmax_fused`, `_info_nce_fused`); the backward scales them by the upstream gradient."""

    @staticmethod
    def forward(ctx, compute, q, k, scale, *args):
        total, lse, col_lse, argmax, ctx.grads = compute(q, k, scale, *args)
        ctx.recompute = functools.partial(compute, q, k, scale, *args)
        ctx.self_mode, ctx.n_args = args[0], len(args)
        ctx.save_for_backward(q, k, scale)
        ctx.mark_non_differentiable(lse, col_lse, argmax)
        return total, lse, col_lse, argmax

    @staticmethod
    def backward(ctx, grad_total, *_):
        q, k, scale = ctx.saved_tensors
        grads = _cast_grads(ctx.needs_input_grad[1:], _take_grads(ctx), q, k, ctx.self_mode, scale, grad_total)
        return (None, *grads, *[None] * ctx.n_args)


def _normalized(x: Tensor, normalize: bool) -> tuple[Tensor, Tensor | None]:
    """x / max(|x|, eps) per row as F.normalize computes it, and the clamped norms (None if not normalised)."""
    if not normalize:
        return x, None
    norm = torch.linalg.vector_norm(x, dim=1).clamp_(min=_NORM_EPS)
    return x / norm[:, None], norm


def _through_normalize(grad: Tensor, unit: Tensor, norm: Tensor | None) -> Tensor:
    """d / dx from d / dx_hat for x_hat = x / max(|x|, eps), in place: (g - x_hat (x_hat . g)) / |x|; rows
    whose norm was clamped to eps get g / eps (the clamp has no gradient)."""
    if norm is None:
        return grad
    dots = row_dots(unit, grad) * (norm > _NORM_EPS)
    return grad.addcmul_(unit, dots[:, None], value=-1.0).div_(norm[:, None])


def _info_nce_fused(q, k, scale, self_mode, chunk, coeff, col_coeff, positive, normalize):
    """(total, lse, col_lse, argmax, grads) of sum_i w_i (lse_i - z_{i,p(i)}) (+ columns) from raw embeddings,
    with the gradients carried back through the normalisation."""
    qc, kc = _upcast(q, k, self_mode)
    qn, q_norm = _normalized(qc, normalize)
    kn, k_norm = (qn, q_norm) if self_mode else _normalized(kc, normalize)
    total, lse, col_lse, argmax, grads = _softmax_fused(qn, kn, scale, self_mode, chunk, coeff, col_coeff)
    s, coeff = scale.to(qc.dtype), coeff.to(qc.dtype)
    pair_w = coeff if col_coeff is None else coeff + col_coeff.to(qc.dtype)  # symmetric: z_ii ends row and column i
    paired = kn[: qn.shape[0]] if positive is None else kn[positive]
    pair_total = weighted_total(pair_w, row_dots(qn, paired))  # sum_i w_i S_{i,p(i)}
    total = total - s * pair_total
    grads.ds -= pair_total
    grads.dq.addcmul_(paired, (s * pair_w)[:, None], value=-1.0)
    del paired
    if positive is None:
        grads.dk[: qn.shape[0]].addcmul_(qn, (s * pair_w)[:, None], value=-1.0)
    else:
        grads.dk.index_add_(0, positive, qn * (s * pair_w)[:, None], alpha=-1.0)
    _through_normalize(grads.dq, qn, q_norm)
    if not self_mode:
        _through_normalize(grads.dk, kn, k_norm)
    return total, lse, col_lse, argmax, grads


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


def _circle_fused(q, k, q_labels, k_labels, coeff, margin, gamma, self_mode, chunk):
    """(total, row_loss, argmax, grads) of sum_i c_i L_i."""
    qc, kc = _upcast(q, k, self_mode)
    coeff = coeff.to(qc.dtype)
    row_loss, argmax, grads = _circle_pass(qc, kc, q_labels, k_labels, margin, gamma, self_mode, chunk, g=coeff)
    return weighted_total(coeff, row_loss), row_loss, argmax, grads


class _CircleFused(torch.autograd.Function):
    """The weighted total sum_i c_i L_i of the Circle loss with gradients computed in the forward pass."""

    @staticmethod
    def forward(ctx, q, k, q_labels, k_labels, coeff, margin, gamma, self_mode, chunk):
        args = (q, k, q_labels, k_labels, coeff, margin, gamma, self_mode, chunk)
        total, row_loss, argmax, ctx.grads = _circle_fused(*args)
        ctx.recompute, ctx.self_mode = functools.partial(_circle_fused, *args), self_mode
        ctx.dtypes = (q.dtype, k.dtype)
        ctx.mark_non_differentiable(row_loss, argmax)
        return total, row_loss, argmax

    @staticmethod
    def backward(ctx, grad_total, *_):
        grads = _take_grads(ctx)
        dq = _scaled(grads.dq, grad_total, ctx.dtypes[0]) if ctx.needs_input_grad[0] else None
        dk = None
        if ctx.needs_input_grad[1] and not ctx.self_mode:
            dk = _scaled(grads.dk, grad_total, ctx.dtypes[1])
        return dq, dk, None, None, None, None, None, None, None


def _chunk_for(q: Tensor, k: Tensor, temporaries: int) -> int:
    """Rows per chunk for a pass of `temporaries` chunk x N buffers in the compute dtype of `q`."""
    return chunk_rows(k.shape[0], temporaries, torch.finfo(compute_dtype(q.dtype)).bits // 8)


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
    chunk = _chunk_for(q, k, _SOFTMAX_TEMPORARIES)
    if coeff is not None and _wants_grad(q, k, scale):
        col_coeff = col_coeff if columns else None
        total, lse, col_lse, argmax = _SoftmaxFused.apply(
            _softmax_fused, q, k, scale, self_mode, chunk, coeff, col_coeff
        )
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
    chunk = _chunk_for(q, k, _CIRCLE_TEMPORARIES)
    if coeff is not None and _wants_grad(q, k):
        total, row_loss, argmax = _CircleFused.apply(q, k, q_labels, k_labels, coeff, margin, gamma, self_mode, chunk)
        return CircleStats(row_loss, argmax, total)
    row_loss, argmax = _CircleRows.apply(q, k, q_labels, k_labels, margin, gamma, self_mode, chunk)
    total = weighted_total(coeff.to(row_loss.dtype), row_loss) if coeff is not None else None
    return CircleStats(row_loss, argmax, total)


def info_nce_total(
    query: Tensor,
    key: Tensor,
    scale: Tensor,
    *,
    self_mode: bool,
    positive: Tensor | None,
    coeff: Tensor,
    col_coeff: Tensor | None,
    normalize: bool,
) -> SoftmaxStats | None:
    """The reduced InfoNCE loss from raw embeddings in one fused step (see `_info_nce_fused`), or None when no
    gradient is wanted (the caller then takes the per-row path). `positive` is None for the default pairs
    (query i with key i); `col_coeff` is given for the symmetric loss."""
    if not _wants_grad(query, key, scale):
        return None
    chunk = _chunk_for(query, key, _SOFTMAX_TEMPORARIES)
    total, lse, col_lse, argmax = _SoftmaxFused.apply(
        _info_nce_fused, query, key, scale, self_mode, chunk, coeff, col_coeff, positive, normalize
    )
    return SoftmaxStats(lse, col_lse if col_coeff is not None else None, argmax, total)
