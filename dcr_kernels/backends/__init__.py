"""Backend dispatch, in one place: `select` names the backend a call runs on, `resolve` imports it.

"auto" (overridden by the DCR_BACKEND environment variable) picks `triton` for CUDA tensors when Triton
imports, `chunked` otherwise. float64 always runs `chunked` (there is no fp64 tensor-core path). The Triton
backend also runs on CPU tensors under the Triton interpreter (`TRITON_INTERPRET=1` set before import),
which is how the kernels are tested without a GPU.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import torch
from torch import Tensor

BACKENDS = ("auto", "reference", "chunked", "triton")
# benchmarks/kernel_launches.py sets this while it traces, on meta tensors (shapes only), the launches a GPU
# call makes; otherwise a meta tensor gets the error of any non-CUDA tensor
TRACING_LAUNCHES = False


def triton_available() -> bool:
    try:
        importlib.import_module("dcr_kernels.backends.triton")
    except ImportError:
        return False
    return True


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def select(name: str, x: Tensor, fn: str) -> str:
    """The backend that runs `fn` on tensors like `x` when `name` is asked for, with a clear error if it
    cannot run there."""
    if name not in BACKENDS:
        raise ValueError(f"{fn}: backend must be one of {BACKENDS}, got {name!r}")
    if name == "auto":
        name = os.environ.get("DCR_BACKEND", "auto")
        if name not in BACKENDS:
            raise ValueError(f"DCR_BACKEND must be one of {BACKENDS}, got {name!r}")
    if name == "auto":
        name = "triton" if x.device.type == "cuda" and triton_available() else "chunked"
    if name == "triton":
        traced = TRACING_LAUNCHES and x.device.type == "meta"
        if x.device.type != "cuda" and not traced and not interpreting():
            raise ValueError(
                f"{fn}: the triton backend needs CUDA tensors (got {x.device}); use backend='chunked' on CPU, "
                "or set TRITON_INTERPRET=1 before importing dcr_kernels to run the kernels in the interpreter"
            )
        if not triton_available():
            raise ImportError(f"{fn}: backend='triton' but Triton is not installed; pip install triton")
        if x.dtype == torch.float64:
            return "chunked"
    return name


def resolve(name: str, x: Tensor, fn: str) -> ModuleType:
    """The backend module that runs `fn` on tensors like `x` (see `select`)."""
    return importlib.import_module(f"dcr_kernels.backends.{select(name, x, fn)}")
