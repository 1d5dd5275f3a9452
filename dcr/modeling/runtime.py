"""Device, mixed precision and attention backend choices for training and embedding."""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import warnings

import torch


def pick_device(spec: str = "auto") -> torch.device:
    """``auto`` means CUDA when available, else CPU; anything else is passed to ``torch.device``."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(spec)


def attn_implementation(spec: str, device: torch.device) -> str:
    """``auto``: flash-attention 2 on CUDA when `flash_attn` is installed, otherwise PyTorch SDPA."""
    if spec != "auto":
        return spec
    if device.type == "cuda" and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def autocast_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """bf16 on CUDA for ``auto``/``bf16`` (and on CPU only for ``bf16``); None (the weights' own) otherwise."""
    if precision not in ("auto", "bf16", "fp32"):
        raise ValueError(f"precision must be auto, bf16 or fp32, got {precision!r}")
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        warn_if_slow_bf16(device, torch.bfloat16)
        return torch.bfloat16
    return None


@functools.cache
def cpu_has_bf16() -> bool:
    """Whether oneDNN runs bf16 natively on this CPU (asked once: `autocast` calls this on every batch)."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def bf16_is_slow(device: torch.device) -> bool:
    """Whether bf16 on ``device`` runs slower than fp32: a CPU that oneDNN finds without bf16 instructions (a
    1024 x 576 x 1536 linear layer: 142 ms against 28 ms with oneDNN held to AVX2)."""
    return device.type == "cpu" and not cpu_has_bf16()


def warn_if_slow_bf16(device: torch.device, dtype: torch.dtype | str | None) -> None:
    """Warn when bf16 is asked of a device where it is slower than fp32 (`bf16_is_slow`)."""
    if dtype != torch.bfloat16 or not bf16_is_slow(device):
        return
    warnings.warn(
        "bf16 was asked for on a CPU without bf16 instructions, where it is slower than fp32: set precision "
        "(training) and dtype (evaluation) to fp32, e.g. in the config file's refine, align and evaluate sections",
        RuntimeWarning,
        stacklevel=3,
    )


def autocast(device: torch.device, precision: str = "auto") -> contextlib.AbstractContextManager:
    """Autocast to `autocast_dtype`; fp32 (no autocast) when it is None."""
    dtype = autocast_dtype(device, precision)
    return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)
