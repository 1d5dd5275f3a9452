"""Triton kernels over tiles of S = A B^T, computed GEMM-style: D is a loop trip count, never a tile width.

Each program owns a BLOCK_M row block of A and one of `num_programs(1)` contiguous column ranges of B (the
column split: enough programs to fill the GPU when M is small, merged deterministically on the host). For
every BLOCK_M x BLOCK_N tile it accumulates S over D in BLOCK_K slices with `tl.dot` (tensor cores; a
BLOCK_M >= 64 tile lowers to Hopper's warp-group MMA), then runs an epilogue on the tile in registers:

- `similarity_stats_kernel` (forward): per row and split, the online log-sum-exp of the candidate logits
  (one for the softmax family, two for Circle: positives and negatives; for the sigmoid loss the sum of
  softplus(-l (t S + b))) and, when the call wants top-1 metrics (WANT_BEST), the best candidate column
  with its similarity (docs/design.md, "The math").
- `pair_weights_kernel` (backward): W = d loss / d S for the tile, the row term (the losses of A's rows)
  plus optionally the column term (the losses of B's rows, whose candidates include A's rows), written to
  a block of the workspace in fp32 (fp32 inputs) or bf16 (16-bit inputs); cuBLAS then forms dA += W B and
  dB += W^T A. Also per row and split: d loss / d scale partial sums (and d loss / d bias for the sigmoid
  loss).

The epilogues are written to an instruction budget (docs/design.md, "The Triton kernels"): exp2 with
log2(e) folded into the scale, masks on edge tiles only, no mask held per entry.

The pair (i, i + diag_offset) is never a candidate: self mode passes 0, a rank's own block inside a
gathered batch its first row, and a call without exclusion passes N (no row index reaches it). With GUIDED
(the softmax family only), a pair is a candidate only where a guide model's similarity, a second GEMM over
the guide's dim in the same tile, is at most the row's threshold, or it is the row's protected pair
(GISTEmbed's false-negative filter; the exclusion still wins).
No atomics anywhere, so every result is deterministic.

Interpreter rules (docs/design.md, "Kernel rules"): loaded tiles are upcast to fp32 when interpreting
(UPCAST), dots are at least 16 x 16, row offsets are 64-bit, no block pointers, no atomics.
"""

import triton
import triton.language as tl

from ..base import CIRCLE as _CIRCLE
from ..base import SIGMOID as _SIGMOID
from ..base import SOFTMAX as _SOFTMAX

SOFTMAX: tl.constexpr = tl.constexpr(_SOFTMAX)
CIRCLE: tl.constexpr = tl.constexpr(_CIRCLE)
SIGMOID: tl.constexpr = tl.constexpr(_SIGMOID)
LOG2E: tl.constexpr = tl.constexpr(1.4426950408889634)
LN2: tl.constexpr = tl.constexpr(0.6931471805599453)
BIG: tl.constexpr = tl.constexpr(1e30)  # pushes an entry out of a set's maximum (|z| / gamma <= 4 for cosines)
RENEW: tl.constexpr = tl.constexpr(2.0**64)  # an entry this far above its set's reference renews the references


@triton.jit
def _dot(a, b, acc, INPUT_PRECISION: tl.constexpr):
    """acc + a @ b with fp32 accumulation; fp32 inputs use INPUT_PRECISION ("tf32" or "ieee")."""
    if a.dtype == tl.float32:
        return tl.dot(a, b, acc, input_precision=INPUT_PRECISION)
    return tl.dot(a, b, acc)


@triton.jit
def _similarity_tile(
    A_rows, B_rows, D, stride_a, stride_b,
    UPCAST: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    """S for the BLOCK_M rows at A_rows against the BLOCK_N rows at B_rows, in fp32, accumulated over D in
    BLOCK_K slices. The loads are unmasked: the launcher pads the rows to a multiple of ROW_PAD and D to a
    multiple of D_PAD with zeros, so every tile of rows and every slice of D exists (rows past M or N are
    masked in the epilogue of edge tiles), and the K loop issues only its loads, address steps and MMAs.
    The row blocks' base pointers carry the 64-bit part of the offsets, so the per-element offsets stay
    32-bit (fewer registers, and the loads pipeline as in a GEMM)."""
    acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    offs_k = tl.arange(0, BLOCK_K)
    a_ptrs = A_rows + tl.arange(0, BLOCK_M)[:, None] * stride_a + offs_k[None, :]
    b_ptrs = B_rows + tl.arange(0, BLOCK_N)[None, :] * stride_b + offs_k[:, None]  # B^T slice: BLOCK_K x BLOCK_N
    for _ in range(0, D, BLOCK_K):
        a = tl.load(a_ptrs)
        b = tl.load(b_ptrs)
        if UPCAST:
            a, b = a.to(tl.float32), b.to(tl.float32)
        acc = _dot(a, b, acc, INPUT_PRECISION)
        a_ptrs += BLOCK_K
        b_ptrs += BLOCK_K
    return acc


@triton.jit
def _not_excluded(m0, n0, diag_offset, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Tile mask of pairs (m0 + i, n0 + j) other than the excluded j = i + diag_offset, in 32-bit tile
    coordinates (the 64-bit shift is clamped: beyond the tile it can never match)."""
    shift = tl.minimum(tl.maximum(m0 + diag_offset - n0, -(2**30)), 2**30).to(tl.int32)
    return tl.arange(0, BLOCK_M)[:, None] + shift != tl.arange(0, BLOCK_N)[None, :]


@triton.jit
def _edge_tile(m0, n0, M, n_end, diag_offset, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Whether the tile at (m0, n0) needs a mask: it holds padding rows or columns, or the excluded pair.
    Interior tiles (at large batch almost all of them) skip the mask arithmetic."""
    shift = m0 + diag_offset - n0
    return (m0 + BLOCK_M > M) | (n0 + BLOCK_N > n_end) | ((shift > -BLOCK_M) & (shift < BLOCK_N))


@triton.jit
def _candidates(m0, n0, M, n_end, diag_offset, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Tile mask of candidate pairs: inside M x N and not excluded."""
    mask_m = tl.arange(0, BLOCK_M) < M - m0
    mask_n = tl.arange(0, BLOCK_N) < n_end - n0
    return mask_m[:, None] & mask_n[None, :] & _not_excluded(m0, n0, diag_offset, BLOCK_M, BLOCK_N)


@triton.jit
def _guide_kept(
    x, fill, GUIDE_A, GUIDE_B, threshold, m0, n0, GD, stride_ga, stride_gb, protect_offset,
    UPCAST: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    """x where a guide model keeps the pair, else `fill` (GISTEmbed's false-negative filter): the guide's
    similarity G = A_g B_g^T, accumulated over its own dim GD beside S, is at most the row's threshold, or
    the pair is the row's protected one (j = i + protect_offset: its positive)."""
    g = _similarity_tile(
        GUIDE_A + m0 * stride_ga, GUIDE_B + n0 * stride_gb, GD, stride_ga, stride_gb,
        UPCAST, INPUT_PRECISION, BLOCK_M, BLOCK_N, BLOCK_K,
    )  # fmt: skip
    protected = ~_not_excluded(m0, n0, protect_offset, BLOCK_M, BLOCK_N)
    return tl.where((g <= threshold[:, None]) | protected, x, fill)


@triton.jit
def _column_range(N, BLOCK_N: tl.constexpr):
    """This program's columns: (first column as int64, tile count, end), whole BLOCK_N tiles dealt
    evenly over num_programs(1) splits."""
    tiles_per_split = tl.cdiv(tl.cdiv(N, BLOCK_N), tl.num_programs(1))
    start = tl.program_id(1).to(tl.int64) * tiles_per_split * BLOCK_N
    end = tl.minimum(N, start + tiles_per_split * BLOCK_N)
    return start, tl.cdiv(end - start, BLOCK_N), end


@triton.jit
def _online_lse2(m, l, x, x_max, c):
    """Merge a tile of values x (-inf where masked), whose row maxima are x_max, into the running
    (max of x, sum of 2^(c (x - max))) of each row, for logits z = x c / log2(e): one exp2 per entry. The
    difference is taken before scaling, so the largest entry contributes exactly 1."""
    m_new = tl.maximum(m, x_max)
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    l = l * tl.math.exp2((m - m_safe) * c) + tl.sum(tl.math.exp2((x - m_safe[:, None]) * c), 1)
    return m_new, l


@triton.jit
def _finish_lse(m, l):
    """LSE from a row's running statistics, with m the largest logit in natural units: m + ln(l); -inf for an
    empty set (l = 0)."""
    return tl.where(l > 0, m + tl.math.log2(tl.where(l > 0, l, 1.0)) * LN2, float("-inf"))


@triton.jit
def _circle_terms(sim, pos, margin):
    """Circle's per-entry terms without gamma, one formula for both sets: with y = 1 - S for positives and
    y = S for negatives, and y' = max(y, -m), z / gamma = y'^2 - m^2 and alpha = y' + m, which is
    -relu(1 + m - S) (S - (1 - m)) for positives and relu(S + m) (S - m) for negatives. `pos` marks the
    positive pairs, either as 1.0 / 0.0 (fewer instructions: no mask held per entry) or as a mask (fewer
    registers). Returns (z / gamma, alpha)."""
    if pos.dtype == tl.int1:
        y = tl.where(pos, 1.0 - sim, sim)
    else:
        y = pos * (1.0 - 2.0 * sim) + sim
    y = tl.maximum(y, -margin)
    return y * y - margin * margin, y + margin


@triton.jit
def _sigmoid_logits(sim, labels_a, labels_b, scale, bias):
    """The sigmoid loss's signed logits x = -l (t S + b), l = +1 on each row's positive column (its label
    code is that column's index) and -1 elsewhere: the loss term is softplus(x), its slope d/dz -l sigmoid(x)."""
    z = sim * scale + bias
    return tl.where(labels_a[:, None] == labels_b[None, :], -z, z)


@triton.jit
def _times(a, b):
    return a * b


@triton.jit
def _softplus_sum(x, BLOCK_N: tl.constexpr):
    """sum_j ln(1 + e^x_j) over a tile's rows (-inf where an entry does not count: it adds exactly 0), as
    sum max(x, 0) + sum ln(1 + u), u = e^-|x| in (0, 1], with one exp2 and no logarithm per pair:
    - u < 2^-7: the series u (1 - u / 2 + u^2 / 3 - u^3 / 4) (relative error below 2^-30; 1 + u would drop
      u below 2^-24);
    - otherwise the factor 1 + u in (1, 2], halved in even columns, multiplied into the row's product, whose
      log2 is taken once per row and tile; each halving is added back. Any partial product of at most 128
      such factors lies within [2^-64, 2^64]: no overflow, no denormal, and its log2 is at most the number
      of factors, so adding the halvings back cancels no more than one bit per factor."""
    u = tl.math.exp2(-tl.abs(x) * LOG2E)
    big = u >= 0.0078125
    series = u * (1.0 + u * (-0.5 + u * (0.3333333333333333 - 0.25 * u)))
    even = (tl.arange(0, BLOCK_N) % 2 == 0)[None, :]
    factor = tl.where(big, (1.0 + u) * tl.where(even, 0.5, 1.0), 1.0)
    halvings = tl.sum(tl.where(big & even, 1.0, 0.0), 1)
    small = tl.sum(tl.where(big, 0.0, series), 1)
    product = tl.reduce(factor, 1, _times)
    return tl.sum(tl.maximum(x, 0.0), 1) + small + (tl.math.log2(product) + halvings) * LN2


@triton.jit
def _label_match(labels_a, labels_b):
    """(pos, neg): 1.0 / 0.0 for pairs with equal / different labels, from the labels as exact float codes in
    two arithmetic instructions per pair (no masks: a tile's worth of them does not fit the predicate
    registers, and spilling them costs more than this)."""
    neg = tl.minimum(tl.abs(labels_a[:, None] - labels_b[None, :]), 1.0)
    return 1.0 - neg, neg


@triton.jit
def _best_column(best, best_idx, sim, tile_best, n0):
    """Running best similarity and its first column. The tile's argmax is searched only when a row of the
    block improves, which after the first tiles of a long row is rare."""
    better = tile_best > best  # strict: the first column wins a tie
    if tl.sum(better.to(tl.int32), 0) > 0:
        tile_idx = tl.argmax(sim, 1).to(tl.int64) + n0
        best_idx = tl.where(better, tile_idx, best_idx)
        best = tl.where(better, tile_best, best)
    return best, best_idx


@triton.jit(do_not_specialize=["M", "N", "diag_offset", "protect_offset"])
def similarity_stats_kernel(
    A, B, LABELS_A, LABELS_B, SCALE,  # A (M, D), B (N, D); fp32 label codes (Circle); scale s = 1/temperature (fp32)
    GUIDE_A, GUIDE_B, THRESHOLD,  # GUIDED: the guide's rows (M, GD), (N, GD) in fp32 and each row's threshold
    STAT1, STAT2, BEST, BEST_IDX,  # (splits, M): softmax lse | Circle lse over positives, over negatives; best
    M, N, D, GD, stride_a, stride_b, stride_ga, stride_gb,
    margin, gamma, diag_offset, protect_offset,
    LOSS: tl.constexpr, WANT_BEST: tl.constexpr, GUIDED: tl.constexpr,
    UPCAST: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    m0 = tl.program_id(0).to(tl.int64) * BLOCK_M
    mask_m = tl.arange(0, BLOCK_M) < M - m0
    if LOSS == SOFTMAX:
        scale = tl.load(SCALE)
        log2_scale = scale * LOG2E  # z in base 2, s S log2(e): each entry costs one exp2
        if GUIDED:
            threshold = tl.load(THRESHOLD + m0 + tl.arange(0, BLOCK_M))  # padded: see launch.kernel_vector
    m1 = tl.full((BLOCK_M,), float("-inf"), tl.float32)  # softmax: the best similarity so far
    if LOSS == SIGMOID:
        labels_a = tl.load(LABELS_A + m0 + tl.arange(0, BLOCK_M), mask=mask_m, other=-1.0)
        scale = tl.load(SCALE)
        bias = tl.load(SCALE + 1)
    if LOSS == CIRCLE:
        labels_a = tl.load(LABELS_A + m0 + tl.arange(0, BLOCK_M), mask=mask_m, other=-1.0)
        log2_gamma = gamma * LOG2E
        # each set's reference in base 2, starting 1024 below any logit (z >= -m^2 gamma); step = m1 - m2
        m1 = tl.full((BLOCK_M,), -1024.0, tl.float32) - (margin * margin + 1.0) * log2_gamma
        step = tl.zeros((BLOCK_M,), tl.float32)
    l1 = tl.zeros((BLOCK_M,), tl.float32)
    m2 = m1
    l2 = tl.zeros((BLOCK_M,), tl.float32)
    best = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    best_idx = tl.full((BLOCK_M,), -1, tl.int64)
    n_start, n_tiles, n_end = _column_range(N, BLOCK_N)
    for t in range(0, n_tiles):
        n0 = n_start + t * BLOCK_N
        sim = _similarity_tile(
            A + m0 * stride_a, B + n0 * stride_b, D, stride_a, stride_b,
            UPCAST, INPUT_PRECISION, BLOCK_M, BLOCK_N, BLOCK_K,
        )  # fmt: skip
        edge = _edge_tile(m0, n0, M, n_end, diag_offset, BLOCK_M, BLOCK_N)
        if LOSS == SOFTMAX:
            if GUIDED:
                sim = _guide_kept(
                    sim, float("-inf"), GUIDE_A, GUIDE_B, threshold, m0, n0, GD, stride_ga, stride_gb,
                    protect_offset, UPCAST, INPUT_PRECISION, BLOCK_M, BLOCK_N, BLOCK_K,
                )  # fmt: skip
            if edge:
                sim = tl.where(_candidates(m0, n0, M, n_end, diag_offset, BLOCK_M, BLOCK_N), sim, float("-inf"))
            tile_best = tl.max(sim, 1)  # s > 0, so the best similarity gives the largest logit
            if WANT_BEST:
                best, best_idx = _best_column(best, best_idx, sim, tile_best, n0)
            m1, l1 = _online_lse2(m1, l1, sim, tile_best, log2_scale)  # m1: the best similarity
        elif LOSS == SIGMOID:
            labels_b = tl.load(LABELS_B + n0 + tl.arange(0, BLOCK_N))  # padded: see launch.kernel_vector
            x = _sigmoid_logits(sim, labels_a, labels_b, scale, bias)
            if edge:
                x = tl.where(_candidates(m0, n0, M, n_end, diag_offset, BLOCK_M, BLOCK_N), x, float("-inf"))
            l1 += _softplus_sum(x, BLOCK_N)
        else:
            labels_b = tl.load(LABELS_B + n0 + tl.arange(0, BLOCK_N))  # padded: see launch.kernel_vector
            pos, neg = _label_match(labels_a, labels_b)
            z, _ = _circle_terms(sim, pos, margin)
            if edge:
                valid = _candidates(m0, n0, M, n_end, diag_offset, BLOCK_M, BLOCK_N)
                z = tl.where(valid, z, float("-inf"))
                if WANT_BEST:
                    sim = tl.where(valid, sim, float("-inf"))
            if WANT_BEST:
                best, best_idx = _best_column(best, best_idx, sim, tl.max(sim, 1), n0)
            # one exp2 per entry against its own set's running reference; the references are renewed (the
            # tile's exact maxima per set, the sums rescaled) only when an entry would pass its reference by
            # 2^64: a set's first entries (the references start below any logit), then rarely
            zc = z * log2_gamma
            e = tl.math.exp2(zc - (pos * step[:, None] + m2[:, None]))
            if tl.max(tl.max(e, 1), 0) > RENEW:
                m1_new = tl.maximum(m1, tl.max(zc - neg * BIG, 1))
                m2_new = tl.maximum(m2, tl.max(zc - pos * BIG, 1))
                step = m1_new - m2_new
                m1_new = step + m2_new  # to the bit, the reference the positives see
                l1 = l1 * tl.math.exp2(m1 - m1_new)
                l2 = l2 * tl.math.exp2(m2 - m2_new)
                m1, m2 = m1_new, m2_new
                e = tl.math.exp2(zc - (pos * step[:, None] + m2[:, None]))
            l1 += tl.sum(e * pos, 1)
            l2 += tl.sum(e * neg, 1)
    out = tl.program_id(1).to(tl.int64) * M + m0 + tl.arange(0, BLOCK_M)
    if LOSS == SOFTMAX:
        tl.store(STAT1 + out, _finish_lse(m1 * scale, l1), mask=mask_m)
    elif LOSS == SIGMOID:
        tl.store(STAT1 + out, l1, mask=mask_m)  # a partial sum: the splits are added on the host
    else:
        tl.store(STAT1 + out, _finish_lse(m1 * LN2, l1), mask=mask_m)  # Circle's maxima are in base 2
        tl.store(STAT2 + out, _finish_lse(m2 * LN2, l2), mask=mask_m)
    if WANT_BEST:
        tl.store(BEST + out, best, mask=mask_m)
        tl.store(BEST_IDX + out, best_idx, mask=mask_m)


@triton.jit(do_not_specialize=["M", "N", "diag_offset", "protect_offset", "col_scale"])
def pair_weights_kernel(
    A, B, LABELS_A, LABELS_B, SCALE,  # as in the forward
    GUIDE_A, GUIDE_B, THRESHOLD,  # as in the forward
    STAT1_A, STAT2_A, COEF_A,  # row term: final statistics and upstream coefficients of A's rows
    STAT1_B, STAT2_B, COEF_B,  # column term: the same for B's rows (read only when COL_TERM)
    W, DSCALE, DBIAS,  # outputs: W (M, N) in W's dtype; (splits, M) partial sums of d loss / d scale (and bias)
    M, N, D, GD, stride_a, stride_b, stride_ga, stride_gb, stride_w,
    margin, gamma, diag_offset, protect_offset,
    col_scale,  # 1 if the column term adds to d loss / d scale, 0 when A is B (its pairs are the row term's)
    LOSS: tl.constexpr, COL_TERM: tl.constexpr, GUIDED: tl.constexpr,
    UPCAST: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    m0 = tl.program_id(0).to(tl.int64) * BLOCK_M
    offs_m = m0 + tl.arange(0, BLOCK_M)
    mask_m = tl.arange(0, BLOCK_M) < M - m0
    # Row constants: the slope's constant factor (s for softmax, gamma for Circle) folded into the
    # coefficients. Each term costs one exp2 of (z - statistic) log2(e), the difference taken in natural units
    # as the forward took it, so that a row's largest logit gives exactly its share.
    coef_a = tl.load(COEF_A + offs_m, mask=mask_m, other=0.0)
    stat1_a = tl.load(STAT1_A + offs_m, mask=mask_m, other=float("inf"))
    if LOSS == SOFTMAX:
        scale = tl.load(SCALE)
        coef_a = coef_a * scale
        if GUIDED:
            threshold = tl.load(THRESHOLD + offs_m)  # padded: see launch.kernel_vector
    elif LOSS == SIGMOID:
        labels_a = tl.load(LABELS_A + offs_m, mask=mask_m, other=-1.0)
        scale = tl.load(SCALE)
        bias = tl.load(SCALE + 1)
        wb = tl.zeros((BLOCK_M,), tl.float32)  # sum_j d loss / d z_ij: d loss / d bias
    else:
        labels_a = tl.load(LABELS_A + offs_m, mask=mask_m, other=-1.0)
        stat2_a = tl.load(STAT2_A + offs_m, mask=mask_m, other=float("inf"))[:, None]
        coef_a = coef_a * gamma
    coef_a = coef_a[:, None]
    stat1_a = stat1_a[:, None]
    ws = tl.zeros((BLOCK_M,), tl.float32)  # sum_j W_ij S_ij of the terms that count towards d loss / d scale
    n_start, n_tiles, n_end = _column_range(N, BLOCK_N)
    for t in range(0, n_tiles):
        n0 = n_start + t * BLOCK_N
        offs_n = n0 + tl.arange(0, BLOCK_N)
        sim = _similarity_tile(
            A + m0 * stride_a, B + n0 * stride_b, D, stride_a, stride_b,
            UPCAST, INPUT_PRECISION, BLOCK_M, BLOCK_N, BLOCK_K,
        )  # fmt: skip
        edge = _edge_tile(m0, n0, M, n_end, diag_offset, BLOCK_M, BLOCK_N)
        if LOSS == SIGMOID:
            labels_b = tl.load(LABELS_B + offs_n)
            x = _sigmoid_logits(sim, labels_a, labels_b, scale, bias)
            g = tl.fdiv(
                1.0, 1.0 + tl.math.exp2(-x * LOG2E), ieee_rounding=False
            )  # sigmoid(x): d term / d z = -l sigmoid(x)
            g = coef_a * tl.where(labels_a[:, None] == labels_b[None, :], -g, g)
            if edge:
                g = tl.where(_candidates(m0, n0, M, n_end, diag_offset, BLOCK_M, BLOCK_N), g, 0.0)
            ws += tl.sum(g * sim, 1)  # d loss / d t sums g S, d loss / d b sums g, and W = t g
            wb += tl.sum(g, 1)
            w = g * scale
        elif LOSS == SOFTMAX:
            z = sim * scale
            if GUIDED:
                z = _guide_kept(
                    z, float("-inf"), GUIDE_A, GUIDE_B, threshold, m0, n0, GD, stride_ga, stride_gb,
                    protect_offset, UPCAST, INPUT_PRECISION, BLOCK_M, BLOCK_N, BLOCK_K,
                )  # fmt: skip
            stat_a = stat1_a
        else:
            labels_b = tl.load(LABELS_B + offs_n)  # the column vectors are padded: see launch.kernel_vector
            same = labels_a[:, None] == labels_b[None, :]  # a mask here: the W tile needs the registers
            z, alpha = _circle_terms(sim, same, margin)
            z = z * gamma
            stat_a = tl.where(same, stat1_a, stat2_a)
        if LOSS != SIGMOID:
            if edge:
                z = tl.where(_candidates(m0, n0, M, n_end, diag_offset, BLOCK_M, BLOCK_N), z, float("-inf"))
            w = coef_a * tl.math.exp2((z - stat_a) * LOG2E)  # +inf statistics (rows not counted) give 0
        if COL_TERM:
            coef_b = tl.load(COEF_B + offs_n)
            stat_b = tl.load(STAT1_B + offs_n)
            if LOSS == SOFTMAX:
                stat_b = stat_b[None, :]
                coef_b = coef_b * scale
            else:
                stat2_b = tl.load(STAT2_B + offs_n)
                stat_b = tl.where(same, stat_b[None, :], stat2_b[None, :])
                coef_b = coef_b * gamma
            w_col = coef_b[None, :] * tl.math.exp2((z - stat_b) * LOG2E)
            if LOSS == SOFTMAX:
                ws += tl.sum((w + col_scale * w_col) * sim, 1)
            w += w_col
        elif LOSS == SOFTMAX:
            ws += tl.sum(w * sim, 1)
        if LOSS == CIRCLE:
            w = w * tl.where(same, -alpha, alpha)  # dz/dS = -gamma alpha (positives), gamma alpha (negatives)
        w_ptrs = W + m0 * stride_w + n0 + tl.arange(0, BLOCK_M)[:, None] * stride_w + tl.arange(0, BLOCK_N)[None, :]
        if edge:
            mask_n = tl.arange(0, BLOCK_N) < n_end - n0
            tl.store(w_ptrs, w.to(W.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])
        else:
            tl.store(w_ptrs, w.to(W.dtype.element_ty))
    if LOSS == SOFTMAX:
        ws = ws / scale  # W = s P, and d loss / d s sums P S
    tl.store(DSCALE + tl.program_id(1).to(tl.int64) * M + offs_m, ws, mask=mask_m)
    if LOSS == SIGMOID:
        tl.store(DBIAS + tl.program_id(1).to(tl.int64) * M + offs_m, wb, mask=mask_m)
