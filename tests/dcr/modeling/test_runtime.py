"""Precision choices: bf16 on a CPU without bf16 instructions warns (it would be slower than fp32, not faster),
and nothing else does."""

from __future__ import annotations

import warnings

import pytest
import torch
from dcr_helpers import tiny_model_dir

from dcr.modeling import runtime
from dcr.modeling.model import load_model

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.mark.parametrize(
    ("device", "precision", "expected"),
    [
        (CPU, "auto", None),
        (CPU, "fp32", None),
        (CPU, "bf16", torch.bfloat16),
        (CUDA, "auto", torch.bfloat16),
        (CUDA, "fp32", None),
    ],
)
def test_autocast_dtype_per_device_and_precision(device, precision, expected, monkeypatch):
    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: True)
    assert runtime.autocast_dtype(device, precision) is expected


def test_bf16_on_a_cpu_without_bf16_instructions_warns_with_the_fix(monkeypatch):
    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: False)
    with pytest.warns(RuntimeWarning, match="slower than fp32.*fp32"):
        assert runtime.autocast_dtype(CPU, "bf16") is torch.bfloat16
    with pytest.warns(RuntimeWarning, match="without bf16 instructions"):
        model, _ = load_model(tiny_model_dir("llama"), dtype="bf16")
    assert next(model.parameters()).dtype is torch.bfloat16


def test_no_warning_where_bf16_is_native_or_not_asked_for(monkeypatch):
    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        runtime.autocast_dtype(CPU, "fp32")
        runtime.autocast_dtype(CUDA, "bf16")
        runtime.warn_if_slow_bf16(CPU, torch.float32)
    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        runtime.autocast_dtype(CPU, "bf16")
        runtime.warn_if_slow_bf16(CPU, torch.bfloat16)
