"""Triton kernels: stream column tiles of S = A B^T per row tile, never storing an M x N buffer.

Forward (`rows_forward_kernel`): per row of A, online log-sum-exp statistics over the candidate
columns of B (one pair for the softmax family, two for Circle: positives and negatives) and the best
other column. Backward (`rows_backward_kernel`): recompute each S tile, form W = d loss / d S from the
saved statistics, and accumulate dA = W B in registers; no atomics, so results are deterministic.
W has a row term (the losses of A's rows) and a column term (the losses of B's rows, whose candidate
sets contain A's rows): in self mode both terms in one pass give dX = (W + W^T) X; in cross mode a second
launch with A and B swapped gives dK. A pair (i, i + offset) can be excluded (self mode: offset 0; a rank's
own block inside a gathered global batch: offset = the rank's first row). Whole rows (D padded to a power
of two, DMAX) are held per tile, as attention kernels hold a head, which bounds D (see `launch.MAX_DIM`).

Interpreter rules (DESIGN.md section 4): tiles are upcast to fp32 when interpreting (UPCAST), dots are
at least 16 x 16, offsets are 64-bit, no atomics, no block pointers.
"""

import triton
import triton.language as tl

SOFTMAX: tl.constexpr = tl.constexpr(0)
CIRCLE: tl.constexpr = tl.constexpr(1)


@triton.jit
def _load_rows(X, offs, mask, stride, D, DMAX: tl.constexpr, UPCAST: tl.constexpr):
    """Rows `offs` of the (rows, D) matrix X as a (len(offs), DMAX) tile, zero-padded."""
    offs_d = tl.arange(0, DMAX)
    tile = tl.load(X + offs[:, None] * stride + offs_d[None, :], mask=mask[:, None] & (offs_d < D)[None, :], other=0.0)
    if UPCAST:
        tile = tile.to(tl.float32)
    return tile


@triton.jit
def _dot(a, b, acc, INPUT_PRECISION: tl.constexpr):
    """acc + a @ b with fp32 accumulation; fp32 inputs use INPUT_PRECISION ("tf32" or "ieee")."""
    if a.dtype == tl.float32:
        return tl.dot(a, b, acc, input_precision=INPUT_PRECISION)
    return tl.dot(a, b, acc)


@triton.jit
def _online_lse(m, l, z):
    """Merge a tile of logits z (rows x cols, -inf where masked) into running (max, sum of exp)."""
    m_new = tl.maximum(m, tl.max(z, 1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    l = l * tl.exp(m - m_safe) + tl.sum(tl.exp(z - m_safe[:, None]), 1)
    return m_new, l


@triton.jit
def _finish_lse(m, l):
    """m + log(l), and -inf for rows whose candidate set is empty (l = 0)."""
    return tl.where(l > 0, m + tl.log(tl.where(l > 0, l, 1.0)), float("-inf"))


@triton.jit
def _circle_logits(sim, margin, gamma):
    """Circle logits for every entry as a positive and as a negative, and their slopes dz/dS (alpha detached)."""
    alpha_pos = tl.maximum(1.0 + margin - sim, 0.0)
    alpha_neg = tl.maximum(sim + margin, 0.0)
    z_pos = -gamma * alpha_pos * (sim - (1.0 - margin))
    z_neg = gamma * alpha_neg * (sim - margin)
    return z_pos, z_neg, -gamma * alpha_pos, gamma * alpha_neg


@triton.jit
def rows_forward_kernel(
    A, B, LABELS_A, LABELS_B, SCALE,  # inputs: A (M, D), B (N, D), int32 labels, scale pointer (fp32)
    STAT1, STAT2, ARGMAX,  # outputs (M,): softmax lse | Circle lse over positives, lse over negatives; best column
    M, N, D, stride_a, stride_b,
    margin, gamma, diag_offset,  # the pair (i, i + diag_offset) is excluded when EXCLUDE_DIAG
    LOSS: tl.constexpr, EXCLUDE_DIAG: tl.constexpr, UPCAST: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    DMAX: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    offs_m = pid.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < M
    a = _load_rows(A, offs_m, mask_m, stride_a, D, DMAX, UPCAST)
    if LOSS == SOFTMAX:
        scale = tl.load(SCALE)
    else:
        labels_a = tl.load(LABELS_A + offs_m, mask=mask_m, other=-1)
    m1 = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    l1 = tl.zeros((BLOCK_M,), tl.float32)
    m2 = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    l2 = tl.zeros((BLOCK_M,), tl.float32)
    best = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    best_idx = tl.full((BLOCK_M,), -1, tl.int64)
    for n0 in range(0, N, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N).to(tl.int64)
        mask_n = offs_n < N
        b = _load_rows(B, offs_n, mask_n, stride_b, D, DMAX, UPCAST)
        sim = _dot(a, tl.trans(b), tl.zeros((BLOCK_M, BLOCK_N), tl.float32), INPUT_PRECISION)
        valid = mask_n[None, :] & mask_m[:, None]
        if EXCLUDE_DIAG:
            valid = valid & (offs_m[:, None] + diag_offset != offs_n[None, :])
        sim_valid = tl.where(valid, sim, float("-inf"))
        tile_best = tl.max(sim_valid, 1)
        tile_idx = tl.argmax(sim_valid, 1).to(tl.int64) + n0
        better = tile_best > best
        best_idx = tl.where(better, tile_idx, best_idx)
        best = tl.where(better, tile_best, best)
        if LOSS == SOFTMAX:
            m1, l1 = _online_lse(m1, l1, tl.where(valid, sim * scale, float("-inf")))
        else:
            labels_b = tl.load(LABELS_B + offs_n, mask=mask_n, other=-2)
            same = labels_a[:, None] == labels_b[None, :]
            z_pos, z_neg, _, _ = _circle_logits(sim, margin, gamma)
            m1, l1 = _online_lse(m1, l1, tl.where(valid & same, z_pos, float("-inf")))
            m2, l2 = _online_lse(m2, l2, tl.where(valid & ~same, z_neg, float("-inf")))
    tl.store(STAT1 + offs_m, _finish_lse(m1, l1), mask=mask_m)
    if LOSS == CIRCLE:
        tl.store(STAT2 + offs_m, _finish_lse(m2, l2), mask=mask_m)
    tl.store(ARGMAX + offs_m, best_idx, mask=mask_m)


@triton.jit
def _dlogits(z, z_neg, slope_pos, slope_neg, coef, stat1, stat2, LOSS: tl.constexpr):
    """One term of d loss / d S (softmax: d loss / d z) for a tile, given per-loss-row coefficients and
    statistics already broadcast to the tile's shape. +inf statistics (rows not counted) give 0."""
    if LOSS == SOFTMAX:
        return coef * tl.exp(z - stat1)
    return coef * (tl.exp(z - stat1) * slope_pos + tl.exp(z_neg - stat2) * slope_neg)


@triton.jit
def rows_backward_kernel(
    A, B, LABELS_A, LABELS_B, SCALE,  # inputs as in the forward
    STAT1_A, STAT2_A, COEF_A,  # row term: statistics and upstream coefficients of A's rows
    STAT1_B, STAT2_B, COEF_B,  # column term: statistics and upstream coefficients of B's rows
    DA, DSCALE,  # outputs: dA (M, D) in A's dtype; per-program partial d loss / d scale (fp32)
    M, N, D, stride_a, stride_b, stride_da,
    margin, gamma, diag_offset,  # the pair (i, i + diag_offset) is excluded when EXCLUDE_DIAG
    LOSS: tl.constexpr, EXCLUDE_DIAG: tl.constexpr, SAME_ROWS: tl.constexpr,  # SAME_ROWS: A is B
    ROW_TERM: tl.constexpr, COL_TERM: tl.constexpr,
    UPCAST: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    DMAX: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    offs_m = pid.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < M
    a = _load_rows(A, offs_m, mask_m, stride_a, D, DMAX, UPCAST)
    if LOSS == SOFTMAX:
        scale = tl.load(SCALE)
    else:
        labels_a = tl.load(LABELS_A + offs_m, mask=mask_m, other=-1)
    if ROW_TERM:
        coef_a = tl.load(COEF_A + offs_m, mask=mask_m, other=0.0)
        stat1_a = tl.load(STAT1_A + offs_m, mask=mask_m, other=float("inf"))
        stat2_a = stat1_a
        if LOSS == CIRCLE:
            stat2_a = tl.load(STAT2_A + offs_m, mask=mask_m, other=float("inf"))
    acc = tl.zeros((BLOCK_M, DMAX), tl.float32)
    dscale = tl.zeros((BLOCK_M,), tl.float32)
    for n0 in range(0, N, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N).to(tl.int64)
        mask_n = offs_n < N
        b = _load_rows(B, offs_n, mask_n, stride_b, D, DMAX, UPCAST)
        sim = _dot(a, tl.trans(b), tl.zeros((BLOCK_M, BLOCK_N), tl.float32), INPUT_PRECISION)
        valid = mask_n[None, :] & mask_m[:, None]
        if EXCLUDE_DIAG:
            valid = valid & (offs_m[:, None] + diag_offset != offs_n[None, :])
        if LOSS == SOFTMAX:
            z = tl.where(valid, sim * scale, float("-inf"))
            z_neg = z
            slope_pos = sim
            slope_neg = sim
        else:
            labels_b = tl.load(LABELS_B + offs_n, mask=mask_n, other=-2)
            same = labels_a[:, None] == labels_b[None, :]
            z, z_neg, slope_pos, slope_neg = _circle_logits(sim, margin, gamma)
            z = tl.where(valid & same, z, float("-inf"))
            z_neg = tl.where(valid & ~same, z_neg, float("-inf"))
        w = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
        if ROW_TERM:
            w_row = _dlogits(z, z_neg, slope_pos, slope_neg, coef_a[:, None], stat1_a[:, None], stat2_a[:, None], LOSS)
            w += w_row
            if LOSS == SOFTMAX:
                dscale += tl.sum(w_row * sim, 1)
        if COL_TERM:
            coef_b = tl.load(COEF_B + offs_n, mask=mask_n, other=0.0)
            stat1_b = tl.load(STAT1_B + offs_n, mask=mask_n, other=float("inf"))
            stat2_b = stat1_b
            if LOSS == CIRCLE:
                stat2_b = tl.load(STAT2_B + offs_n, mask=mask_n, other=float("inf"))
            w_col = _dlogits(z, z_neg, slope_pos, slope_neg, coef_b[None, :], stat1_b[None, :], stat2_b[None, :], LOSS)
            w += w_col
            if LOSS == SOFTMAX and not SAME_ROWS:  # when A is B, entry (j, i) is visited by row j's program
                dscale += tl.sum(w_col * sim, 1)
        if LOSS == SOFTMAX:
            w = w * scale
        acc = _dot(w.to(b.dtype), b, acc, INPUT_PRECISION)
    offs_d = tl.arange(0, DMAX)
    tl.store(
        DA + offs_m[:, None] * stride_da + offs_d[None, :],
        acc.to(DA.dtype.element_ty),
        mask=mask_m[:, None] & (offs_d < D)[None, :],
    )
    tl.store(DSCALE + pid, tl.sum(dscale, 0))
