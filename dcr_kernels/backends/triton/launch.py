"""Host-side launches of the kernels: output allocation, tile configs (autotuned on a GPU, one fixed
config under the interpreter), and the dtype rules (fp32 statistics, gradients in the input dtype)."""

from __future__ import annotations

import functools
import os

import torch
import triton
from torch import Tensor

from . import kernels

MAX_DIM = 4096  # whole padded rows live in a tile: beyond this the tiles no longer fit on chip
SOFTMAX, CIRCLE = 0, 1


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def input_precision() -> str:
    """Precision of fp32 dots: "tf32" (default, tensor cores) or "ieee" (exact fp32), from DCR_INPUT_PRECISION."""
    value = os.environ.get("DCR_INPUT_PRECISION", "tf32")
    if value not in ("tf32", "ieee"):
        raise ValueError(f"DCR_INPUT_PRECISION must be 'tf32' or 'ieee', got {value!r}")
    return value


def new_output(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
    """Uninitialised kernel output (tests replace this to poison outputs and check every element is written)."""
    return torch.empty(shape, dtype=dtype, device=device)


# (BLOCK_M, BLOCK_N, warps, stages): a few shapes per padded dim; the autotuner keeps the fastest and
# drops those that do not fit. The backward's fp32 accumulator holds BLOCK_M x DMAX values, so large DMAX
# takes small BLOCK_M and more warps to stay near 128 registers per thread.
_GPU_CONFIGS = {
    "small": [(128, 64, 8, 3), (64, 64, 4, 3), (128, 128, 8, 2), (64, 128, 4, 3)],  # DMAX <= 128
    "medium": [(64, 64, 4, 2), (128, 64, 8, 2), (64, 32, 4, 2), (32, 64, 4, 2)],  # DMAX 256
    "large": [(32, 32, 4, 2), (16, 64, 4, 2), (32, 64, 8, 2), (16, 32, 4, 1)],  # DMAX 512 - 1024
    "huge": [(16, 32, 4, 1), (16, 16, 4, 1)],  # DMAX 2048 - 4096
}
_INTERPRETER_META = {"BLOCK_M": 32, "BLOCK_N": 32}


def _bucket(dmax: int) -> str:
    if dmax <= 128:
        return "small"
    if dmax <= 256:
        return "medium"
    return "large" if dmax <= 1024 else "huge"


@functools.cache
def _tuned(kernel_name: str, bucket: str, autotune: bool):
    """The kernel autotuned over its bucket's configs, or fixed to the first config when `autotune` is
    off (DCR_TRITON_AUTOTUNE=0: quick compiles for tests)."""
    kernel = getattr(kernels, kernel_name)
    configs = [
        triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)
        for bm, bn, w, s in _GPU_CONFIGS[bucket]
    ]
    return triton.autotune(configs=configs if autotune else configs[:1], key=["DMAX", "EXCLUDE_DIAG", "LOSS"])(kernel)


def _launch(kernel_name: str, rows: int, dmax: int, *args, **constexprs) -> None:
    if interpreting():
        meta = dict(_INTERPRETER_META)
        getattr(kernels, kernel_name)[(triton.cdiv(rows, meta["BLOCK_M"]),)](*args, **constexprs, **meta)
        return
    grid = lambda meta: (triton.cdiv(rows, meta["BLOCK_M"]),)  # noqa: E731
    autotune = os.environ.get("DCR_TRITON_AUTOTUNE", "1") != "0"
    _tuned(kernel_name, _bucket(dmax), autotune)[grid](*args, **constexprs)


def _dmax(d: int) -> int:
    if d > MAX_DIM:
        raise ValueError(f"the triton backend supports dim <= {MAX_DIM}, got {d}; use backend='chunked'")
    return max(16, triton.next_power_of_2(d))


def _common() -> dict:
    return dict(UPCAST=interpreting(), INPUT_PRECISION=input_precision())


def rows_forward(
    a: Tensor,
    b: Tensor,
    *,
    loss: int,
    exclude_offset: int | None,
    scale: Tensor | None = None,
    labels_a: Tensor | None = None,
    labels_b: Tensor | None = None,
    margin: float = 0.0,
    gamma: float = 0.0,
) -> tuple[Tensor, Tensor | None, Tensor]:
    """Row statistics of S = a b^T: (lse, None, argmax) for softmax, (lse_pos, lse_neg, argmax) for Circle.
    Pairs (i, i + exclude_offset) are not candidates (self mode: 0; None: every pair is)."""
    m, d = a.shape
    stat1 = new_output((m,), torch.float32, a.device)
    stat2 = new_output((m,), torch.float32, a.device) if loss == CIRCLE else stat1
    argmax = new_output((m,), torch.int64, a.device)
    dummy = stat1
    _launch(
        "rows_forward_kernel", m, _dmax(d),
        a, b, dummy if labels_a is None else labels_a, dummy if labels_b is None else labels_b,
        dummy if scale is None else scale,
        stat1, stat2, argmax,
        m, b.shape[0], d, a.stride(0), b.stride(0), float(margin), float(gamma), exclude_offset or 0,
        LOSS=loss, EXCLUDE_DIAG=exclude_offset is not None, DMAX=_dmax(d), **_common(),
    )  # fmt: skip
    return stat1, (stat2 if loss == CIRCLE else None), argmax


def rows_backward(
    a: Tensor,
    b: Tensor,
    *,
    loss: int,
    exclude_offset: int | None,
    row_term: tuple[Tensor, Tensor | None, Tensor] | None,
    col_term: tuple[Tensor, Tensor | None, Tensor] | None,
    scale: Tensor | None = None,
    labels_a: Tensor | None = None,
    labels_b: Tensor | None = None,
    margin: float = 0.0,
    gamma: float = 0.0,
) -> tuple[Tensor, Tensor]:
    """dA = W b for W = d loss / d S, and d loss / d scale. Each term is (stat1, stat2, coefficients)
    for the rows of a (row_term) or of b (col_term); statistics must already be +inf where not counted.
    When `a is b` both terms are taken in one pass and d loss / d scale counts each pair once."""
    m, d = a.shape
    block_rows = _INTERPRETER_META["BLOCK_M"] if interpreting() else 16  # smallest BLOCK_M of any config
    da = new_output((m, d), a.dtype, a.device)
    dscale = torch.zeros(triton.cdiv(m, block_rows), dtype=torch.float32, device=a.device)
    dummy = dscale
    r1, r2, rc = row_term if row_term is not None else (dummy, None, dummy)
    c1, c2, cc = col_term if col_term is not None else (dummy, None, dummy)
    _launch(
        "rows_backward_kernel", m, _dmax(d),
        a, b, dummy if labels_a is None else labels_a, dummy if labels_b is None else labels_b,
        dummy if scale is None else scale,
        r1, r1 if r2 is None else r2, rc, c1, c1 if c2 is None else c2, cc,
        da, dscale,
        m, b.shape[0], d, a.stride(0), b.stride(0), da.stride(0), float(margin), float(gamma), exclude_offset or 0,
        LOSS=loss, EXCLUDE_DIAG=exclude_offset is not None, SAME_ROWS=a is b,
        ROW_TERM=row_term is not None, COL_TERM=col_term is not None,
        DMAX=_dmax(d), **_common(),
    )  # fmt: skip
    return da, dscale.sum()
