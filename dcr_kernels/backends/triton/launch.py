"""Host side of the kernels: tile configs, column splits, the backward's block workspace, and the dtype
rules (fp32 statistics, gradients in the input dtype).

Forward: one launch of `similarity_stats_kernel`, whose per-split statistics are merged here (a
log-sum-exp and a first-wins argmax over at most a few dozen splits: deterministic).
Backward: for each block of rows and columns (as many as fit in the workspace budget, `workspace_shape`),
`pair_weights_kernel` writes W = d loss / d S for the block, and cuBLAS forms dA[rows] += W B[cols] and, in
cross mode, dB[cols] += W^T A[rows]; with all columns in one block, dA[rows] = W B is one GEMM. D is a
loop trip count in the kernels and a GEMM dimension in cuBLAS, so any D runs with the same tiles.
"""

from __future__ import annotations

import functools
import math
import os
from typing import NamedTuple

import torch
import triton
import triton.testing
from torch import Tensor

from ...precision import fp32_precision, gemm_precision
from .. import interpreting
from ..base import CIRCLE, SIGMOID, SOFTMAX, Pairs
from . import kernels
from .tuning import choose, deterministic, tuning_key

KERNELS = ("similarity_stats_kernel", "pair_weights_kernel")


class Tile(NamedTuple):
    """One autotuner config: the tile, warps and pipeline stages, the compute capabilities it is kept for
    (major * 10 + minor), and whether only the softmax family keeps it."""

    block_m: int
    block_n: int
    block_k: int
    warps: int
    stages: int
    architectures: range = range(80, 1000)
    softmax_only: bool = False


# BLOCK_M >= 64 so that Hopper lowers the similarity dots to warp-group MMA. Each config fits the shared
# memory of its targets with no register spills: tests/kernels/test_triton_resources.py compiles every one
# for sm_80 and sm_90, as launched. The first config of each list runs everywhere (DCR_TRITON_AUTOTUNE=0
# takes it). The 128 x 128 forward tile is Hopper-only and softmax-only (Circle's epilogue spills there);
# the backward's
# tiles are smaller because its epilogue holds more tile-sized values (S, logits, W). Later architectures
# are not checked.
HOPPER = range(90, 100)
_GPU_CONFIGS = {
    ("similarity_stats_kernel", "16-bit"): [
        Tile(128, 64, 64, 8, 4),
        Tile(128, 128, 64, 8, 3, HOPPER, softmax_only=True),
        Tile(64, 128, 64, 8, 4),
        Tile(64, 64, 64, 4, 4),
    ],
    ("similarity_stats_kernel", "fp32"): [
        Tile(128, 64, 32, 8, 4),
        Tile(128, 128, 32, 8, 3, HOPPER, softmax_only=True),
        Tile(64, 128, 32, 8, 4),
        Tile(64, 64, 32, 4, 4),
    ],
    ("pair_weights_kernel", "16-bit"): [Tile(128, 64, 64, 8, 4), Tile(64, 128, 64, 8, 4), Tile(64, 64, 64, 4, 4)],
    ("pair_weights_kernel", "fp32"): [Tile(128, 64, 32, 8, 4), Tile(64, 128, 32, 8, 4), Tile(64, 64, 32, 4, 4)],
    # exact fp32 dots (DCR_INPUT_PRECISION=ieee) run on FMA units, with operands held in registers
    ("similarity_stats_kernel", "fp32-ieee"): [Tile(64, 64, 16, 8, 2), Tile(64, 32, 16, 4, 2)],
    ("pair_weights_kernel", "fp32-ieee"): [Tile(64, 64, 16, 8, 2), Tile(64, 32, 16, 4, 2)],
    # a guide model's mask (GISTEmbed): a second GEMM per tile over the guide's fp32 rows, so shorter K
    # slices and fewer stages keep both loops' buffers within shared memory; any input dtype
    ("similarity_stats_kernel", "guided"): [Tile(128, 64, 32, 8, 3), Tile(64, 64, 32, 4, 3)],
    ("pair_weights_kernel", "guided"): [Tile(128, 64, 32, 8, 3), Tile(64, 64, 32, 4, 3)],
    ("similarity_stats_kernel", "guided-ieee"): [Tile(64, 64, 16, 8, 2), Tile(64, 32, 16, 4, 2)],
    ("pair_weights_kernel", "guided-ieee"): [Tile(64, 64, 16, 8, 2), Tile(64, 32, 16, 4, 2)],
}
_INTERPRETER_META = {"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 32}
_MIN_SPLIT_COLS = 512  # a column split streams at least this many columns
DETERMINISTIC_SMS = 132  # the SM count column splits assume in deterministic mode (an H100 SXM)
ROW_PAD, D_PAD = 128, 64  # the largest BLOCK_M / BLOCK_N, and a multiple of every BLOCK_K


def new_output(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
    """Uninitialised kernel output (tests replace this to poison outputs and check every element is written)."""
    return torch.empty(shape, dtype=dtype, device=device)


@functools.cache
def gpu_configs(
    kernel_name: str,
    dtype: torch.dtype,
    capability: int,
    precision: str = "tf32",
    loss: int = SOFTMAX,
    guided: bool = False,
) -> tuple[triton.Config, ...]:
    """The configs the tuner may pick for `kernel_name` on `dtype` inputs on a GPU of compute
    `capability` (major * 10 + minor: 80 for A100, 90 for H100/H200), with fp32 dots in `precision`, for
    the loss family `loss`, with or without a guide model's mask (built once per kind: every launch asks)."""
    if guided:  # the guide's dot is fp32 whatever the model's dtype
        family = "guided" if precision == "tf32" else "guided-ieee"
    else:
        family = "16-bit" if dtype != torch.float32 else ("fp32" if precision == "tf32" else "fp32-ieee")
    return tuple(
        triton.Config(
            {"BLOCK_M": t.block_m, "BLOCK_N": t.block_n, "BLOCK_K": t.block_k},
            num_warps=t.warps,
            num_stages=t.stages,
        )
        for t in _GPU_CONFIGS[(kernel_name, family)]
        if capability in t.architectures and not (t.softmax_only and loss != SOFTMAX)
    )


def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of the CUDA device."""
    return torch.cuda.get_device_properties(device).multi_processor_count


def column_splits(m: int, n: int, device: torch.device) -> int:
    """Programs per row block: enough (row block, column range) programs to fill the GPU twice over when M
    is small, each streaming at least _MIN_SPLIT_COLS columns; in deterministic mode as for a GPU of
    DETERMINISTIC_SMS multiprocessors whatever the GPU, so the merge order does not depend on it. Under the
    interpreter up to 3, so that the tests exercise the merge."""
    tiles = triton.cdiv(n, _INTERPRETER_META["BLOCK_N"] if interpreting() else _MIN_SPLIT_COLS)
    if interpreting():
        return max(1, min(3, tiles))
    programs = 2 * (DETERMINISTIC_SMS if deterministic() else sm_count(device))
    return max(1, min(tiles, triton.cdiv(programs, triton.cdiv(m, 128))))


def workspace_shape(m: int, n: int, element_bytes: int) -> tuple[int, int]:
    """(rows, columns) of the backward's W blocks within DCR_TRITON_WORKSPACE_MB (default 1024 MiB).

    dA accumulates over column blocks and dB over row blocks, so the accumulation traffic is
    M N D (1 / rows + 1 / columns) elements: the blocks are as square as the budget allows (the whole of a
    side that fits), which keeps it a fixed fraction of the matmul work at any batch. Block edges are
    multiples of ROW_PAD (at least that) unless they span all of M or N, so that a block's last tile stays
    in the padding."""
    budget = int(float(os.environ.get("DCR_TRITON_WORKSPACE_MB", "1024")) * 2**20) // element_bytes
    if m * n <= budget:
        return m, n
    align = ROW_PAD
    side = max(align, math.isqrt(budget) // align * align)
    if n <= side:
        return min(m, max(align, budget // n // align * align)), n
    if m <= side:
        return m, min(n, max(align, budget // m // align * align))
    return side, side


def _launch(kernel_name: str, rows: int, splits: int, x: Tensor, *args, cols: int, **constexprs) -> None:
    """Launch on a (row blocks, splits) grid of a rows x cols pair range; `x` (the first input) gives the
    dtype, D and the device (made the current CUDA device for the launch, so kernels and the cuBLAS calls
    share its stream). The config comes from `tuning.choose`."""
    kernel = getattr(kernels, kernel_name)
    if interpreting():
        meta = dict(_INTERPRETER_META)
        kernel[(triton.cdiv(rows, meta["BLOCK_M"]), splits)](*args, **constexprs, **meta)
        return
    major, minor = torch.cuda.get_device_capability(x.device)
    precision, loss, guided = constexprs["INPUT_PRECISION"], constexprs["LOSS"], constexprs["GUIDED"]
    configs = gpu_configs(kernel_name, x.dtype, 10 * major + minor, precision, loss, guided)

    def run(config: triton.Config) -> None:
        grid = (triton.cdiv(rows, config.kwargs["BLOCK_M"]), splits)
        kernel[grid](*args, **constexprs, **config.kwargs, num_warps=config.num_warps, num_stages=config.num_stages)

    col_term = constexprs.get("COL_TERM", False)
    key = tuning_key(kernel_name, rows, cols, x.shape[1], x.dtype, precision, loss, col_term, guided)
    with torch.cuda.device(x.device):
        seconds = lambda i: triton.testing.do_bench(lambda: run(configs[i])) / 1e3  # noqa: E731
        run(configs[choose(key, len(configs), torch.cuda.get_device_name(x.device), seconds)])


def kernel_ready(x: Tensor) -> Tensor:
    """A matrix as the kernels are compiled for it: contiguous, 16-byte aligned, and zero-padded to a multiple
    of ROW_PAD rows and D_PAD columns, so that every tile the kernels load exists and their K loop needs no
    masks (one O(rows x D) copy, only when x is not already so: batches that are multiples of 128 with D a
    multiple of 64 go through as they are; zeros add nothing to S)."""
    rows, width = x.shape
    padded_rows, padded_width = -(-rows // ROW_PAD) * ROW_PAD, -(-width // D_PAD) * D_PAD
    if x.is_contiguous() and x.data_ptr() % 16 == 0 and (padded_rows, padded_width) == (rows, width):
        return x
    out = torch.zeros(padded_rows, padded_width, dtype=x.dtype, device=x.device)
    out[:rows, :width] = x
    return out


def kernel_vector(x: Tensor, fill: float) -> Tensor:
    """A per-row vector (statistics, coefficients, labels) as fp32 padded with `fill` to a multiple of ROW_PAD,
    so that the kernels read a tile's worth of it without a mask: what they read past the end is the fill
    (+inf statistics, zero coefficients, labels no row has), and edge tiles mask those pairs anyway."""
    padded = torch.full((-(-x.shape[0] // ROW_PAD) * ROW_PAD,), fill, dtype=torch.float32, device=x.device)
    padded[: x.shape[0]] = x
    return padded


def kernel_labels(pairs: Pairs) -> tuple[Tensor | None, Tensor | None]:
    """Circle's labels (the sigmoid loss's positive columns and column indices) as the kernels read them:
    fp32 codes (exact below 2^24; the codes number at most the rows, so the check is on the shapes), which
    compare in two arithmetic instructions per pair; padded with -1 (A's rows) and -2 (B's rows), which
    match nothing."""
    if pairs.labels_a is None:
        return None, None
    codes = pairs.labels_b.shape[0] if pairs.loss == SIGMOID else pairs.labels_a.shape[0] + pairs.labels_b.shape[0]
    if codes > 2**24:
        raise ValueError(
            "the Triton Circle kernels take at most 2^24 rows and keys together, the sigmoid kernels 2^24 keys "
            "(their label codes are fp32); use backend='chunked'"
        )
    return kernel_vector(pairs.labels_a, -1.0), kernel_vector(pairs.labels_b, -2.0)


def _common(pairs: Pairs) -> dict:
    return dict(UPCAST=interpreting(), INPUT_PRECISION=pairs.precision, GUIDED=pairs.guide is not None)


class _GuideArgs(NamedTuple):
    """A guide model's mask as the kernels read it: its rows in fp32 (the thresholds compare fp32
    similarities whatever the model's dtype), padded as `kernel_ready` pads, the thresholds padded as
    `kernel_vector` pads, and the protected pair's offset over the whole call (n: none)."""

    a: Tensor
    b: Tensor
    threshold: Tensor
    dim: int
    protect_offset: int


def _guide_args(pairs: Pairs, a: Tensor, b: Tensor, n: int) -> _GuideArgs:
    """The guide's kernel arguments, or stand-ins the kernel never reads (GUIDED is off)."""
    guide = pairs.guide
    if guide is None:
        return _GuideArgs(a, b, a, a.shape[1], n)
    ga, gb = kernel_ready(guide.a.float()), kernel_ready(guide.b.float())
    threshold = kernel_vector(guide.threshold.float(), float("inf"))
    return _GuideArgs(ga, gb, threshold, ga.shape[1], _diag(guide.protect_offset, n))


def _decided(pairs: Pairs) -> Pairs:
    """The pairs with the fp32 precision decided (the caller's, or the policy's now)."""
    return pairs if pairs.precision is not None else pairs._replace(precision=fp32_precision())


def _diag(exclude_offset: int | None, n: int) -> int:
    """The kernels' diag_offset: the excluded pair's offset, or n (never reached) when none is excluded."""
    return n if exclude_offset is None else exclude_offset


def _block_diag(offset: int | None, n: int, r0: int, c0: int) -> int:
    """`_diag` for the block of rows from r0 and columns from c0."""
    return n if offset is None else offset + r0 - c0


def rows_forward(
    a: Tensor, b: Tensor, pairs: Pairs, *, want_best: bool = True
) -> tuple[Tensor, Tensor | None, Tensor | None, Tensor | None]:
    """Row statistics of S = a b^T over the candidate pairs: (lse, None, argmax, best) for softmax,
    (lse_pos, lse_neg, argmax, best) for Circle; argmax and best are None unless `want_best`."""
    pairs = _decided(pairs)
    loss = pairs.loss
    m, n = a.shape[0], b.shape[0]
    same_rows = a is b
    a = kernel_ready(a)
    b = a if same_rows else kernel_ready(b)
    labels_a, labels_b = kernel_labels(pairs)
    scale, exclude_offset = pairs.scale, pairs.exclude_offset
    guide = _guide_args(pairs, a, b, n)
    d = a.shape[1]
    splits = column_splits(m, n, a.device)
    stat1 = new_output((splits, m), torch.float32, a.device)
    stat2 = new_output((splits, m), torch.float32, a.device) if loss == CIRCLE else stat1
    best = new_output((splits, m), torch.float32, a.device) if want_best else stat1
    best_idx = new_output((splits, m), torch.int64, a.device) if want_best else stat1
    _launch(
        "similarity_stats_kernel",
        m,
        splits,
        a,
        a,
        b,
        stat1 if labels_a is None else labels_a,  # any valid pointer stands for an argument the kernel skips
        stat1 if labels_b is None else labels_b,
        stat1 if scale is None else scale,
        guide.a,
        guide.b,
        guide.threshold,
        stat1,
        stat2,
        best,
        best_idx,
        m,
        n,
        d,
        guide.dim,
        a.stride(0),
        b.stride(0),
        guide.a.stride(0),
        guide.b.stride(0),
        float(pairs.margin),
        float(pairs.gamma),
        _diag(exclude_offset, n),
        guide.protect_offset,
        cols=n,
        LOSS=loss,
        WANT_BEST=want_best,
        **_common(pairs),
    )
    if splits > 1 and loss == SIGMOID:
        stat1 = stat1.sum(dim=0, keepdim=True)  # the sigmoid loss's partial row sums, in split order
    elif splits > 1:
        stat1 = torch.logsumexp(stat1, dim=0, keepdim=True)
        stat2 = torch.logsumexp(stat2, dim=0, keepdim=True) if loss == CIRCLE else stat1
        if want_best:
            winner = best.argmax(dim=0, keepdim=True)  # the first split, so the lowest column, wins a tie
            best, best_idx = best.gather(0, winner), best_idx.gather(0, winner)
    stat2 = stat2[0] if loss == CIRCLE else None
    return (stat1[0], stat2, best_idx[0], best[0]) if want_best else (stat1[0], stat2, None, None)


Term = tuple[Tensor, Tensor | None, Tensor]  # (stat1, stat2, coefficients), +inf statistics where not counted


def _term_vectors(term: Term) -> Term:
    """A term's statistics and coefficients as the kernels read them (padded: `kernel_vector`)."""
    stat1, stat2, coef = term
    inf = float("inf")
    return kernel_vector(stat1, inf), None if stat2 is None else kernel_vector(stat2, inf), kernel_vector(coef, 0.0)


def pair_grads(
    a: Tensor,
    b: Tensor,
    pairs: Pairs,
    row_term: Term,
    col_term: Term | None,
    *,
    self_mode: bool = False,
    want_db: bool = False,
) -> tuple[Tensor, Tensor | None, Tensor]:
    """(dA = W b, dB = W^T a or None, d loss / d scale) for W = d loss / d S built from the row term (A's
    rows) and the column term (B's rows). In self mode (b is a, the column term is the row term) dA already
    holds both terms, dB is not formed, and d loss / d scale counts each pair once. For the sigmoid loss the
    last is (d loss / d t, d loss / d b), and the row term's coefficients are d loss / d row sum."""
    pairs = _decided(pairs)
    loss = pairs.loss
    m, d = a.shape
    n = b.shape[0]
    same_rows = self_mode
    a = kernel_ready(a)
    b = a if same_rows else kernel_ready(b)
    labels_a, labels_b = kernel_labels(pairs)
    scale, exclude_offset = pairs.scale, pairs.exclude_offset
    if pairs.guide is not None and (col_term is not None or same_rows):
        raise ValueError("a guide's mask is not symmetric: pass the row term alone, with a and b apart")
    guide = _guide_args(pairs, a, b, n)
    row_term = _term_vectors(row_term)
    col_term = None if col_term is None else _term_vectors(col_term)
    w_dtype = torch.float32 if a.dtype == torch.float32 else torch.bfloat16  # fp16's range cannot hold W
    a_w = a[:m].to(w_dtype)
    b_w = a_w if same_rows else b[:n].to(w_dtype)
    block_rows, block_cols = workspace_shape(m, n, torch.finfo(w_dtype).bits // 8)
    splits = column_splits(block_rows, block_cols, a.device)
    # W's row stride padded to 16 elements: aligned, vectorised stores whatever N is
    workspace = new_output((block_rows, -(-block_cols // 16) * 16), w_dtype, a.device)
    workspace[:, block_cols:] = 0  # never part of W, but a CPU 16-bit GEMM reads the padding of a strided view
    partial = new_output((splits, block_rows), torch.float32, a.device)
    partial_bias = new_output((splits, block_rows), torch.float32, a.device) if loss == SIGMOID else partial
    one_block = block_cols == n  # dA of a row block in one GEMM; else accumulated over column blocks in fp32
    da = new_output((m, a.shape[1]), a.dtype if one_block else torch.float32, a.device)
    if not one_block:
        da.zero_()
    db = torch.zeros(n, a.shape[1], dtype=torch.float32, device=a.device) if want_db and not same_rows else None
    dscale = torch.zeros((2,) if loss == SIGMOID else (), dtype=torch.float32, device=a.device)
    r1, r2, rc = row_term
    c1, c2, cc = col_term if col_term is not None else (None, None, None)

    def part(x: Tensor | None, span: slice) -> Tensor:
        return partial if x is None else x[span]  # any valid pointer stands for an argument the kernel skips

    with gemm_precision(pairs.precision):  # dA and dB in the precision of the similarities
        for r0 in range(0, m, block_rows):
            rows = slice(r0, min(m, r0 + block_rows))
            for c0 in range(0, n, block_cols):
                cols = slice(c0, min(n, c0 + block_cols))
                w = workspace[: rows.stop - r0, : cols.stop - c0]
                _launch(
                    "pair_weights_kernel",
                    w.shape[0],
                    splits,
                    a,
                    a[rows],
                    b[cols],
                    part(labels_a, rows),
                    part(labels_b, cols),
                    partial if scale is None else scale,
                    guide.a[rows],
                    guide.b[cols],
                    part(None if pairs.guide is None else guide.threshold, rows),
                    r1[rows],
                    part(r1 if r2 is None else r2, rows),
                    rc[rows],
                    part(c1, cols),
                    part(c1 if c2 is None else c2, cols),
                    part(cc, cols),
                    w,
                    partial,
                    partial_bias,
                    w.shape[0],
                    w.shape[1],
                    a.shape[1],
                    guide.dim,
                    a.stride(0),
                    b.stride(0),
                    guide.a.stride(0),
                    guide.b.stride(0),
                    w.stride(0),
                    float(pairs.margin),
                    float(pairs.gamma),
                    _block_diag(exclude_offset, n, r0, c0),
                    _block_diag(None if pairs.guide is None else pairs.guide.protect_offset, n, r0, c0),
                    0 if same_rows else 1,
                    cols=w.shape[1],
                    LOSS=loss,
                    COL_TERM=col_term is not None,
                    **_common(pairs),
                )
                written = slice(0, splits * w.shape[0])  # the kernel wrote (splits, rows)
                if loss == SOFTMAX:
                    dscale += partial.view(-1)[written].sum()
                elif loss == SIGMOID:
                    dscale += torch.stack([partial.view(-1)[written].sum(), partial_bias.view(-1)[written].sum()])
                if one_block:
                    da[rows] = w @ b_w
                else:
                    _accumulate(da[rows], w, b_w[cols])
                if db is not None:
                    _accumulate(db[cols], w.T, a_w[rows])
    return da[:, :d].to(a.dtype), (None if db is None else db[:, :d].to(b.dtype)), dscale


def _accumulate(out: Tensor, x: Tensor, y: Tensor) -> None:
    """out += x @ y into an fp32 accumulator: one GEMM with beta = 1 when x is fp32, else the 16-bit
    product (fp32 accumulation inside the GEMM) added in."""
    if x.dtype == out.dtype:
        out.addmm_(x, y)
    else:
        out += x @ y
