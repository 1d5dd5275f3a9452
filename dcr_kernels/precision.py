"""One precision policy for fp32 inputs: the kernels' similarity dots and the backward's GEMMs alike.

fp32 inputs are multiplied either in TF32 (tensor cores, a 10-bit mantissa) or in IEEE fp32 (exact, FMA
units). The decision, in order of precedence:

1. `use_fp32_precision("tf32" | "ieee")`, a context manager (it covers every entry point: the functional
   losses, the modules, the distributed losses and the drop-ins);
2. the environment variable ``DCR_INPUT_PRECISION`` (``tf32`` or ``ieee``);
3. PyTorch's own setting: ``torch.backends.cuda.matmul.fp32_precision`` when it is set, else
   ``torch.get_float32_matmul_precision()`` ("highest", PyTorch's default, means IEEE; "high" and
   "medium" mean TF32, as they do for cuBLAS).

The Triton backend takes the decision once per forward, keeps it for the backward, and runs its backward's
GEMMs (dA = W B, dB = W^T A) under the same precision (`gemm_precision`), so a call never mixes TF32
similarities with IEEE GEMMs or the other way round. bf16 and fp16 inputs are unaffected (their dots use
tensor cores with fp32 accumulation).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch

PRECISIONS = ("tf32", "ieee")
_OVERRIDE: ContextVar[str | None] = ContextVar("dcr_fp32_precision", default=None)


def _checked(value: str, where: str) -> str:
    if value not in PRECISIONS:
        raise ValueError(f"{where} must be 'tf32' or 'ieee', got {value!r}")
    return value


def _explicit() -> str:
    """PyTorch's newer per-backend setting (torch.backends.cuda.matmul.fp32_precision), "none" when unset."""
    try:
        return getattr(torch.backends.cuda.matmul, "fp32_precision", "none")
    except RuntimeError:  # PyTorch refuses to read it after a mix of its legacy and new TF32 settings
        return "none"


def torch_fp32_precision() -> str:
    """What PyTorch's settings ask of fp32 matmuls: "tf32" or "ieee"."""
    explicit = _explicit()
    if explicit in PRECISIONS:
        return explicit
    try:
        legacy = torch.get_float32_matmul_precision()
    except RuntimeError:  # the newer setting was used in a way the legacy getter refuses to read
        return "ieee"
    return "ieee" if legacy == "highest" else "tf32"


def fp32_precision() -> str:
    """The precision of fp32 dots and GEMMs now: the context override, else DCR_INPUT_PRECISION, else PyTorch's."""
    override = _OVERRIDE.get()
    if override is not None:
        return override
    env = os.environ.get("DCR_INPUT_PRECISION")
    if env:
        return _checked(env, "DCR_INPUT_PRECISION")
    return torch_fp32_precision()


@contextmanager
def use_fp32_precision(precision: str) -> Iterator[None]:
    """Within the block, fp32 inputs run in ``precision`` ("tf32" or "ieee") whatever the other settings say."""
    token = _OVERRIDE.set(_checked(precision, "precision"))
    try:
        yield
    finally:
        _OVERRIDE.reset(token)


@contextmanager
def gemm_precision(precision: str) -> Iterator[None]:
    """PyTorch's fp32 GEMMs in ``precision`` within the block (unchanged when PyTorch already says so),
    through whichever of PyTorch's two settings the program uses (mixing them makes PyTorch raise)."""
    if torch_fp32_precision() == precision:
        yield
        return
    if _explicit() in PRECISIONS:
        saved = torch.backends.cuda.matmul.fp32_precision
        torch.backends.cuda.matmul.fp32_precision = precision
        try:
            yield
        finally:
            torch.backends.cuda.matmul.fp32_precision = saved
        return
    saved = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest" if precision == "ieee" else "high")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(saved)
