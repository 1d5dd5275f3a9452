"""The block primitives, dispatched: one contract, two implementations.

`rows_forward(a, b, pairs)`: per row i of A, the statistics of S = A B^T over the candidate columns of B
(softmax lse; Circle's LSE over positives and over negatives; the sigmoid loss's row sum), the argmax column
and the best similarity, so that statistics of different key blocks can be merged.
`rows_backward(a, b, pairs, row_term, col_term)`: W = d loss / d S from the FINAL statistics and per-row
coefficients of A's rows (row term) and of B's rows (column term: B's rows are loss rows whose candidates
include A's rows); returns dA = W B, optionally dB = W^T A from the same W, and d loss / d scale.

`pairs` (`base.Pairs`) describes the loss: family, candidate mask, scale, labels. The Triton kernels
(`backends.triton.launch`) and row-chunked PyTorch (`backends.tiles`, O(chunk x N) memory) implement the
contract; `backends.select` decides where a call runs (CPU, float64 or asked for: PyTorch).
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import select, tiles
from .base import SIGMOID, Pairs
from .tiles import BlockStats, Term

BACKENDS = ("auto", "chunked", "triton")

# deferred imports: the Triton launcher loads only when a kernel runs (Triton is absent off Linux).


def use_triton(a: Tensor, backend: str) -> bool:
    """Whether `backend` sends `a` to the kernels (`backends.select` decides, as for the functional API)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return select(backend, a, "block primitives") == "triton"


def rows_forward(a: Tensor, b: Tensor, pairs: Pairs, *, want_best: bool = True, backend: str = "auto") -> BlockStats:
    """Row statistics of S = a b^T over b's candidate columns (see the module docstring); argmax and best are
    None unless `want_best`."""
    if use_triton(a, backend):
        from .triton import launch

        return BlockStats(*launch.rows_forward(a, b, _kernel_pairs(pairs), want_best=want_best))
    return tiles.rows_forward(a, b, pairs, want_best=want_best)


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
    """(dA, dB or None, d loss / d scale) for W = d loss / d S built from the row and column terms; dA and dB in
    the inputs' dtypes, dB = W^T A only when `want_db`. When `a is b` both terms are taken in one pass,
    dA is the whole gradient and d loss / d s counts each pair once."""
    if use_triton(a, backend):
        from .triton import launch

        kernel_terms = _kernel_term(row_term), _kernel_term(col_term)
        return launch.pair_grads(a, b, _kernel_pairs(pairs), *kernel_terms, self_mode=a is b, want_db=want_db)
    return tiles.rows_backward(a, b, pairs, row_term, col_term, want_db)


def _kernel_pairs(pairs: Pairs) -> Pairs:
    """The pairs as the kernels read them: an fp32 scale, fp32 label codes for the sigmoid loss (its positive
    column and the columns' indices), else int32 labels."""
    scale = None if pairs.scale is None else pairs.scale.detach().reshape(-1).float()
    label_dtype = torch.float32 if pairs.loss == SIGMOID else torch.int32
    labels = [None if y is None else y.to(label_dtype).contiguous() for y in (pairs.labels_a, pairs.labels_b)]
    return pairs._replace(scale=scale, labels_a=labels[0], labels_b=labels[1])


def _kernel_term(term: Term | None) -> Term | None:
    """(stat1, stat2, coefficients) as the kernels read them: fp32, contiguous."""
    if term is None:
        return None
    s1, s2, coef = term
    return s1.float().contiguous(), None if s2 is None else s2.float().contiguous(), coef.float().contiguous()
