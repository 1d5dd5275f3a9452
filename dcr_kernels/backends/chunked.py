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
of the symmetric loss; the per-row path spends 1 forward and 3 backward. Self mode from
_SELF_SYMMETRY_MIN_ROWS rows on (4096; smaller batches keep the row path, which was as fast there) scores
only the row strips on and above the block diagonal of the symmetric S and spends 2 units fused (statistics
1/2, then S again 1/2 and dX = W X 1), 1/2 + 3/2 on the per-row path ("Self mode by symmetry" below). On CPU
the elementwise work per chunk entry is kept to a few in-place passes, so the matrix products dominate.
"""

from __future__ import annotations

import functools
import os

import torch
from torch import Tensor

from ..pair_terms import circle_row_loss, row_dots, safe_lse, weighted_total
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
_SELF_SYMMETRY_MIN_ROWS = 4096  # self mode by symmetry from this batch size on (see `_use_self_symmetry`)
_SELF_CHUNK_ROWS = 256  # at most this many rows per strip on that path
_BEST_BLOCK = 256  # columns per block of `_row_best`
_CIRCLE_SHIFTED_TEMPORARIES = 3  # self mode by symmetry without an offset: one more, for the second exponential


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
    exclude_offset: int | None = None,
) -> tuple[Tensor, Tensor, _Grads | None]:
    """One pass over row chunks. Computes row lse and argmax (unless `lse` is given) and, when `g` is
    given, accumulates the gradients of sum_i g_i lse_i + sum_j col_g_j col_lse_j. Self mode leaves out
    the pairs (i, i); in cross mode `exclude_offset` leaves out the pairs (i, i + exclude_offset).

    Each chunk x N matrix is one buffer, touched as few times as possible while it is hot: the scale is
    folded into the query rows, exp(z - max) is taken in place, and the row factors of the gradient
    (g, s, 1 / row sum) multiply chunk x D operands instead of the chunk x N matrix."""
    m = q.shape[0]
    out_lse = torch.empty(m, dtype=q.dtype, device=q.device) if lse is None else lse
    argmax = torch.empty(m, dtype=torch.long, device=q.device)
    grads = _Grads(q, k, self_mode) if g is not None else None
    col_base = safe_lse(col_lse)[None, :] if col_g is not None else None
    shift = lse is None and m > 0 and _exp_needs_shift(q, k, s)
    excluded = 0 if self_mode else exclude_offset
    (scores,) = _workspace(1, min(chunk, m), q, k.shape[0])
    for r0 in range(0, m, chunk):
        rows = slice(r0, r0 + chunk)
        qb = q[rows]
        z = torch.mm(qb * s, k.T, out=scores[: qb.shape[0]])
        if excluded is not None:
            z.diagonal(r0 + excluded).fill_(float("-inf"))
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


# --- Self mode by symmetry -------------------------------------------------------------------------------
# In self mode S = X X^T is symmetric, so a row strip I x [I, B) (the row chunk against itself and every later
# chunk: the tiles on and above the block diagonal) holds, read by rows, part of its own rows' candidates and,
# read by columns, part of every later row's. Pass 1 scores each strip once and folds it into running row
# statistics both ways; pass 2 scores it again and forms, for every entry, the loss's derivative from both
# rows' final statistics, W_ij = d L_i / d S_ij + d L_j / d S_ji, so that one strip gives dX_I += W X_[I, B)
# and dX_(I, B) += W_off^T X_I (W_off: the strip right of its diagonal tile, which the first product already
# counts once). Matrix work: 1/2 + 1/2 + 1 units instead of 3.


def _use_self_symmetry(self_mode: bool, rows: int) -> bool:
    """Whether a self-mode pass takes the symmetric path: from _SELF_SYMMETRY_MIN_ROWS rows on. Below that the
    row path was as fast or faster on one CPU thread (D = 256: B = 2048 about 5% slower by symmetry, B = 4096
    about 15% faster, B = 8192 about 25% faster): the symmetric path runs two passes with more elementwise
    work per entry, scores the diagonal tiles whole, and its strips are thinner matrix products."""
    return self_mode and rows >= _SELF_SYMMETRY_MIN_ROWS


def _row_best(z: Tensor) -> tuple[Tensor, Tensor]:
    """Row maximum and its first column (-1 for a row of -inf): the maxima of contiguous blocks of
    _BEST_BLOCK columns (one vectorised pass), the best block per row, then that block alone searched."""
    h, n = z.shape
    nb = n // _BEST_BLOCK
    if nb == 0:
        best, idx = z.max(dim=1)
    else:
        main = nb * _BEST_BLOCK
        block_max = z[:, :main].unflatten(1, (nb, _BEST_BLOCK)).amax(dim=2)
        if main < n:
            block_max = torch.cat([block_max, z[:, main:].amax(dim=1, keepdim=True)], dim=1)
        best, block = block_max.max(dim=1)
        cols = (block * _BEST_BLOCK)[:, None] + torch.arange(_BEST_BLOCK, device=z.device)
        vals = z.gather(1, cols.clamp(max=n - 1)).masked_fill_(cols >= n, float("-inf"))
        idx = cols.gather(1, vals.argmax(dim=1, keepdim=True)).squeeze(1)
    return best, torch.where(best > float("-inf"), idx, -1)


def _strips(rows: int, chunk: int):
    """(r0, r1) of each row chunk; its strip is rows r0:r1 against columns r0:rows. Callers cap the chunk at
    _SELF_CHUNK_ROWS: thinner strips keep each strip's elementwise passes in cache."""
    for r0 in range(0, rows, chunk):
        yield r0, min(r0 + chunk, rows)


def _tile(buffer: Tensor, rows: int, cols: int) -> Tensor:
    """A contiguous rows x cols view at the start of a flat workspace buffer."""
    return buffer[: rows * cols].view(rows, cols)


def _flat_workspace(count: int, chunk: int, like: Tensor) -> list[Tensor]:
    rows = like.shape[0]
    return [torch.empty(min(chunk, rows) * rows, dtype=like.dtype, device=like.device) for _ in range(count)]


class _RunningLse:
    """Per-row log-sum-exp merged over pieces: the running maximum `top` and sum of exp(z - top)."""

    def __init__(self, rows: int, like: Tensor):
        self.top = torch.full((rows,), float("-inf"), dtype=like.dtype, device=like.device)
        self.total = torch.zeros(rows, dtype=like.dtype, device=like.device)

    def add(self, rows: slice, z: Tensor, dim: int, scratch: Tensor) -> None:
        """Merge the entries of z (rows along the other dim than `dim`; -inf entries are not candidates),
        exponentiated into `scratch` after subtracting their maximum."""
        if z.numel() == 0:
            return
        top = z.amax(dim=dim)
        base = torch.where(top > float("-inf"), top, 0.0)
        e = torch.sub(z, base.unsqueeze(dim), out=scratch).clamp_(min=_EXP_FLOOR).exp_()
        self.merge(rows, top, e.sum(dim=dim))

    def merge(self, rows: slice, top: Tensor, total: Tensor) -> None:
        old_top, old_total = self.top[rows], self.total[rows]
        high = torch.maximum(old_top, top)
        base = torch.where(high > float("-inf"), high, 0.0)
        total = torch.where(top > float("-inf"), total, 0.0)  # a piece without candidates adds nothing
        old_total.mul_((old_top - base).exp_()).add_(total * (top - base).exp_())
        old_top.copy_(high)

    def lse(self) -> Tensor:
        return torch.where(self.top > float("-inf"), self.top + self.total.log(), float("-inf"))


class _RunningArgmax:
    """Per-row best candidate merged over strips. A strip's own rows get their column there; a later row
    learns only that strip's best value and which strip gave it, and `finish` finds the column afterwards
    (one row against one chunk). Strips come in column order and only a strictly better value replaces the
    best, so ties go to the lower column across strips, and within a strip `_row_best` and `finish` take the
    first maximum: exact ties go to the lowest column, as in the dense reference (Circle's columns are in its
    label-sorted order, as on its row path)."""

    def __init__(self, rows: int, like: Tensor):
        self.best = torch.full((rows,), float("-inf"), dtype=like.dtype, device=like.device)
        self.index = torch.full((rows,), -1, dtype=torch.long, device=like.device)
        self.source = torch.full((rows,), -1, dtype=torch.long, device=like.device)  # r0 of the giving strip

    def add_rows(self, r0: int, best: Tensor, index: Tensor) -> None:
        rows = slice(r0, r0 + best.shape[0])
        better = best > self.best[rows]
        self.best[rows] = torch.where(better, best, self.best[rows])
        self.index[rows] = torch.where(better, index + r0, self.index[rows])
        self.source[rows] = torch.where(better, -1, self.source[rows])

    def add_columns(self, r0: int, r1: int, z_off: Tensor) -> None:
        if z_off.shape[1] == 0:
            return
        best = z_off.amax(dim=0)
        rows = slice(r1, None)
        better = best > self.best[rows]
        self.best[rows] = torch.where(better, best, self.best[rows])
        self.source[rows] = torch.where(better, r0, self.source[rows])

    def finish(self, left: Tensor, right: Tensor, chunk: int) -> Tensor:
        """Column indices, scoring a row j whose best came from strip r0 as left_j . right_(r0:r0+chunk)."""
        for r0 in torch.unique(self.source).tolist():
            if r0 < 0:
                continue
            rows = (self.source == r0).nonzero().squeeze(1)
            scores = left[rows] @ right[r0 : r0 + chunk].T
            self.index[rows] = scores.argmax(dim=1) + r0
        return torch.where(self.best > float("-inf"), self.index, -1)


def _self_softmax_stats(x: Tensor, s: Tensor, chunk: int) -> tuple[Tensor, Tensor]:
    """Row lse and argmax of z = s X X^T without the diagonal, from the strips (pass 1). When no exponent
    can leave the normal range (`_exp_needs_shift`), exp(z) is summed as it is, by rows and by columns;
    otherwise each piece is exponentiated against its own maximum and merged."""
    b, chunk = x.shape[0], min(chunk, _SELF_CHUNK_ROWS)
    shift = b > 0 and _exp_needs_shift(x, x, s)
    buf, scratch = _flat_workspace(2, chunk, x)
    running = _RunningLse(b, x)
    best = _RunningArgmax(b, x)
    for r0, r1 in _strips(b, chunk):
        h, n = r1 - r0, b - r0
        z = torch.mm(x[r0:r1] * s, x[r0:].T, out=_tile(buf, h, n))
        z.diagonal().fill_(float("-inf"))
        best.add_rows(r0, *_row_best(z))
        best.add_columns(r0, r1, z[:, h:])
        if shift:
            running.add(slice(r1, None), z[:, h:], 0, _tile(scratch, h, n - h))
            running.add(slice(r0, r1), z, 1, _tile(scratch, h, n))
        else:
            z.exp_()
            running.total[r0:r1] += z.sum(dim=1)
            running.total[r1:] += z[:, h:].sum(dim=0)
    lse = running.lse() if shift else running.total.log()
    return lse, best.finish(x, x * s, chunk)


def _self_softmax_grads(x: Tensor, s: Tensor, chunk: int, lse: Tensor, g: Tensor) -> _Grads:
    """Gradients of sum_i g_i lse_i (pass 2): W_ij = g_i P_ij + g_j P_ji per strip entry, P_ij = exp(z_ij -
    lse_i); without a shift (`_exp_needs_shift`) W = exp(z) (u_i + u_j) with u_i = g_i exp(-lse_i), one
    exponential per entry, else two."""
    b, chunk = x.shape[0], min(chunk, _SELF_CHUNK_ROWS)
    grads = _Grads(x, x, True)
    if b == 0:
        return grads
    shift = _exp_needs_shift(x, x, s)
    finite = torch.isfinite(lse)
    gg = torch.where(finite, g, 0.0)
    if shift:
        row_base = safe_lse(lse)
    else:
        u = torch.where(finite, gg * (-torch.where(finite, lse, 0.0)).exp(), 0.0)
    buf, wbuf = _flat_workspace(2, chunk, x)
    ds = torch.zeros((), dtype=x.dtype, device=x.device)
    for r0, r1 in _strips(b, chunk):
        h, n = r1 - r0, b - r0
        xs = x[r0:r1] * s
        z = torch.mm(xs, x[r0:].T, out=_tile(buf, h, n))
        z.diagonal().fill_(float("-inf"))
        w = _tile(wbuf, h, n)
        if shift:
            torch.sub(z, row_base[r0:r1, None], out=w).clamp_(min=_EXP_FLOOR).exp_().mul_(gg[r0:r1, None])
            z.sub_(row_base[None, r0:]).clamp_(min=_EXP_FLOOR).exp_()
            w.addcmul_(z, gg[None, r0:])
        else:
            z.exp_()
            torch.mul(z, u[r0:r1, None], out=w).addcmul_(z, u[None, r0:])
        w.diagonal().fill_(0.0)
        wx = w[:, :h] @ x[r0:r1]  # the diagonal tile holds both (i, j) and (j, i): counted once
        ds += 0.5 * row_dots(x[r0:r1], wx).sum()
        if n > h:
            wx_off = w[:, h:] @ x[r1:]
            ds += row_dots(x[r0:r1], wx_off).sum()
            wx += wx_off
            grads.dq[r1:].addmm_(w[:, h:].T, xs)
        grads.dq[r0:r1].add_(wx * s)
    grads.ds += ds
    return grads


def _self_label_blocks(labels: Tensor) -> list[tuple[int, int]]:
    """(first, end) of each run of equal sorted labels with at least two rows (the rows that have positives)."""
    return [(a, e) for _, a, e in _label_runs(labels) if e - a > 1]


def _strip_blocks(runs: list[tuple[int, int]], r0: int, r1: int) -> list[tuple[int, int, int]]:
    """The positive blocks of strip r0:r1 in strip coordinates: rows a:b against columns a:c."""
    return [(max(a, r0) - r0, min(e, r1) - r0, e - r0) for a, e in runs if a < r1 and e > r0]


def _circle_offset(x: Tensor, margin: float, gamma: float) -> float | None:
    """A constant that every negative's logit may be exponentiated against, or None. A negative's
    z + gamma m^2 = gamma w^2 lies in [0, U] with U = gamma max(m^2, max |x|^4) (|S_ij| <= |x_i| |x_j|); while
    U <= -2 _EXP_FLOOR, exp(z + gamma m^2 - U / 2) is a normal number for every negative (as in
    `_exp_needs_shift`), so one exponential per entry serves the row and the column sums. Otherwise (a large
    gamma, unnormalised rows) each piece is exponentiated against its own maximum."""
    if x.shape[0] == 0:
        return None
    bound = gamma * max(margin * margin, float(torch.linalg.vector_norm(x.detach(), dim=1).max()) ** 4)
    return bound / 2 if bound <= -2 * _EXP_FLOOR else None


def _self_circle_stats(x: Tensor, labels: Tensor, margin: float, gamma: float, chunk: int, offset: float | None):
    """(lse_pos, lse_neg, argmax) per row of sorted rows x with sorted labels (pass 1). Logits are held as
    z + gamma m^2 - offset (0 without an offset)."""
    b = x.shape[0]
    runs = _self_label_blocks(labels)
    counts = torch.bincount(labels)
    n_same = counts[labels]
    has_pos, has_neg = n_same > 1, n_same < b
    frame = gamma * margin * margin - (offset or 0.0)  # z = held value - frame
    sims, scratch = _flat_workspace(2, chunk, x)
    pos, neg = _RunningLse(b, x), _RunningLse(b, x)
    if offset is not None:
        neg.top.zero_()
    best = _RunningArgmax(b, x)
    for r0, r1 in _strips(b, chunk):
        h, n = r1 - r0, b - r0
        sim = torch.mm(x[r0:r1], x[r0:].T, out=_tile(sims, h, n))
        sim.diagonal().fill_(float("-inf"))
        best.add_rows(r0, *_row_best(sim))
        best.add_columns(r0, r1, sim[:, h:])
        sim.diagonal().fill_(0.0)  # any finite value: the pair is excluded below
        blocks = _strip_blocks(runs, r0, r1)
        w = torch.clamp(sim, min=-margin, out=_tile(scratch, h, n))
        for a, e, c in blocks:
            torch.clamp(1.0 - sim[a:e, a:c], min=-margin, out=w[a:e, a:c])
        z = torch.addcmul(sim.new_full((), -(offset or 0.0)), w, w, value=gamma, out=sim)
        z.diagonal().fill_(float("-inf"))
        for a, e, c in blocks:  # rows a:e, columns a:c of the strip; the columns from h on are later rows
            block = z[a:e, a:c]
            pos.add(slice(r0 + a, r0 + e), block, 1, torch.empty_like(block))
            right = block[:, max(h - a, 0) :]
            pos.add(slice(r0 + max(a, h), r0 + c), right, 0, torch.empty_like(right))
            block.fill_(float("-inf"))
        if offset is None:
            neg.add(slice(r1, None), z[:, h:], 0, _tile(scratch, h, n - h))
            neg.add(slice(r0, r1), z, 1, _tile(scratch, h, n))
        else:
            z.exp_()  # positives and the pair (i, i) give 0
            neg.total[r0:r1] += z.sum(dim=1)
            neg.total[r1:] += z[:, h:].sum(dim=0)
    lse_pos = torch.where(has_pos, pos.lse() - frame, float("-inf"))
    lse_neg = torch.where(has_neg, neg.lse() - frame, float("-inf"))
    return lse_pos, lse_neg, best.finish(x, x, chunk)


def _self_circle_grads(
    x: Tensor,
    labels: Tensor,
    margin: float,
    gamma: float,
    chunk: int,
    offset: float | None,
    lse_pos: Tensor,
    lse_neg: Tensor,
    g: Tensor,
) -> _Grads:
    """Gradients of sum_i g_i L_i for sorted rows (pass 2). With c_i = g_i sigmoid(LSE_P + LSE_N) and L the
    lse of the entry's set, W_ij = +-(w_ij + m) (c_i exp(z_ij - L_i) + c_j exp(z_ij - L_j)) and dX = gamma W X.
    With an offset the negatives take one exponential: W_ij = (w_ij + m) exp(z_ij + frame) (u_i + u_j),
    u_i = c_i exp(-frame - L_i)."""
    b = x.shape[0]
    grads = _Grads(x, x, True)
    runs = _self_label_blocks(labels)
    frame = gamma * margin * margin - (offset or 0.0)
    both = lse_pos + lse_neg
    coef = torch.where(torch.isfinite(both), torch.sigmoid(torch.where(torch.isfinite(both), both, 0.0)) * g, 0.0)
    base_pos, base_neg = safe_lse(lse_pos) + frame, safe_lse(lse_neg) + frame  # in the frame of the held logits
    if offset is None:
        sims, slopes, wbuf = _flat_workspace(3, chunk, x)
    else:
        sims, slopes = _flat_workspace(2, chunk, x)
        finite = torch.isfinite(lse_neg)
        u = torch.where(finite, coef * (-torch.where(finite, base_neg, 0.0)).exp(), 0.0)
    for r0, r1 in _strips(b, chunk):
        h, n = r1 - r0, b - r0
        sim = torch.mm(x[r0:r1], x[r0:].T, out=_tile(sims, h, n))
        blocks = _strip_blocks(runs, r0, r1)
        w = torch.clamp(sim, min=-margin, out=_tile(slopes, h, n))
        for a, e, c in blocks:
            torch.clamp(1.0 - sim[a:e, a:c], min=-margin, out=w[a:e, a:c])
        z = torch.addcmul(sim.new_full((), -(offset or 0.0)), w, w, value=gamma, out=sim)
        pos_w = []
        for a, e, c in blocks:
            block = z[a:e, a:c]
            rows, cols = slice(r0 + a, r0 + e), slice(r0 + a, r0 + c)
            term = (block - base_pos[rows, None]).clamp_(min=_EXP_FLOOR).exp_().mul_(coef[rows, None])
            other = (block - base_pos[None, cols]).clamp_(min=_EXP_FLOOR).exp_()
            slope = w[a:e, a:c] + margin
            pos_w.append(term.addcmul_(other, coef[None, cols]).mul_(slope).neg_())  # positives' slope: -(w + m)
        if offset is None:
            d = torch.sub(z, base_neg[r0:r1, None], out=_tile(wbuf, h, n)).clamp_(min=_EXP_FLOOR).exp_()
            d.mul_(coef[r0:r1, None])
            z.sub_(base_neg[None, r0:]).clamp_(min=_EXP_FLOOR).exp_()
            d.addcmul_(z, coef[None, r0:]).mul_(w.add_(margin))
        else:
            scaled = z.exp_().mul_(w.add_(margin))
            d = torch.mul(scaled, u[r0:r1, None], out=w).addcmul_(scaled, u[None, r0:])
        for (a, e, c), block in zip(blocks, pos_w, strict=True):
            d[a:e, a:c] = block
        d.diagonal().fill_(0.0)
        grads.dq[r0:r1].addmm_(d, x[r0:], alpha=gamma)
        if n > h:
            grads.dq[r1:].addmm_(d[:, h:].T, x[r0:r1], alpha=gamma)
    return grads


def _self_circle(
    x: Tensor,
    labels: Tensor,
    margin: float,
    gamma: float,
    chunk: int,
    *,
    g: Tensor | None = None,
    lse: tuple[Tensor, Tensor] | None = None,
) -> tuple[Tensor, Tensor, Tensor | None, _Grads | None]:
    """(lse_pos, lse_neg, argmax, grads) of self-mode Circle in the callers' order. The rows are sorted by
    label first (as in `_circle_pass`), so that each strip's positives are a few blocks. Pass 1 runs unless
    the statistics `lse` are given (argmax is then None); pass 2 runs when `g` is given."""
    labels, perm = torch.sort(labels, stable=True)
    xs, chunk = x[perm], min(chunk, _SELF_CHUNK_ROWS)
    offset = _circle_offset(x, margin, gamma)
    argmax = None
    if lse is None:
        lse_pos, lse_neg, argmax = _self_circle_stats(xs, labels, margin, gamma, chunk, offset)
        found = torch.where(argmax >= 0, perm[argmax.clamp(min=0)], -1)
        argmax = torch.empty_like(found)
        argmax[perm] = found
    else:
        lse_pos, lse_neg = lse[0][perm], lse[1][perm]
    grads = None
    if g is not None:
        grads = _self_circle_grads(xs, labels, margin, gamma, chunk, offset, lse_pos, lse_neg, g[perm])
        grads.dq = grads.dk = torch.empty_like(grads.dq).index_copy_(0, perm, grads.dq)
    if lse is not None:
        return lse[0], lse[1], argmax, grads
    out_pos, out_neg = torch.empty_like(lse_pos), torch.empty_like(lse_neg)
    out_pos[perm], out_neg[perm] = lse_pos, lse_neg
    return out_pos, out_neg, argmax, grads


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
        ctx.symmetric = _use_self_symmetry(self_mode, q.shape[0])
        if ctx.symmetric:
            lse, argmax = _self_softmax_stats(qc, s, chunk)
        else:
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
        if ctx.symmetric:
            grads = _self_softmax_grads(qc, scale.to(qc.dtype), ctx.chunk, lse, g.to(qc.dtype))
            return (*_cast_grads(ctx.needs_input_grad, grads, q, k, True, scale), None, None, None)
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
    if col_coeff is None and _use_self_symmetry(self_mode, q.shape[0]):
        lse, argmax = _self_softmax_stats(qc, s, chunk)
        grads = _self_softmax_grads(qc, s, chunk, lse, coeff)
        return weighted_total(coeff, lse), lse, torch.empty(0, dtype=qc.dtype), argmax, grads
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
        if _use_self_symmetry(self_mode, q.shape[0]):
            lse_pos, lse_neg, argmax, _ = _self_circle(qc, q_labels, margin, gamma, chunk)
            row_loss = circle_row_loss(lse_pos, lse_neg)
            ctx.lse = (lse_pos, lse_neg)
        else:
            row_loss, argmax, _ = _circle_pass(qc, kc, q_labels, k_labels, margin, gamma, self_mode, chunk, g=None)
            ctx.lse = None
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
        if ctx.lse is not None:
            grads = _self_circle(qc, q_labels, margin, gamma, chunk, g=g, lse=ctx.lse)[3]
        else:
            _, _, grads = _circle_pass(qc, kc, q_labels, k_labels, margin, gamma, self_mode, chunk, g=g)
        dq = grads.dq.to(q.dtype) if ctx.needs_input_grad[0] else None
        dk = grads.dk.to(k.dtype) if ctx.needs_input_grad[1] and not self_mode else None
        return dq, dk, None, None, None, None, None, None


def _circle_fused(q, k, q_labels, k_labels, coeff, margin, gamma, self_mode, chunk):
    """(total, row_loss, argmax, grads) of sum_i c_i L_i."""
    qc, kc = _upcast(q, k, self_mode)
    coeff = coeff.to(qc.dtype)
    if _use_self_symmetry(self_mode, q.shape[0]):
        lse_pos, lse_neg, argmax, grads = _self_circle(qc, q_labels, margin, gamma, chunk, g=coeff)
        row_loss = circle_row_loss(lse_pos, lse_neg)
        return weighted_total(coeff, row_loss), row_loss, argmax, grads
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
    argmax: bool = True,
) -> SoftmaxStats:
    """Row (and column) statistics of the softmax family; the argmax is always computed (`argmax=False` is
    accepted and changes nothing)."""
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
    argmax: bool = True,
) -> CircleStats:
    """Circle's per-row losses; the argmax is always computed (`argmax=False` is accepted and changes
    nothing)."""
    if _use_self_symmetry(self_mode, q.shape[0]) and _circle_offset(_upcast(q, q, True)[0], margin, gamma) is None:
        chunk = _chunk_for(q, k, _CIRCLE_SHIFTED_TEMPORARIES)
    else:
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
