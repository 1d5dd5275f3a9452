"""The precision policy for fp32 inputs: the decision table (context override, DCR_INPUT_PRECISION, PyTorch's
setting), and the Triton backend running what was decided in its kernels and in its backward's GEMMs."""

from __future__ import annotations

import os

import pytest
import torch

import dcr_kernels as dk
from dcr_kernels.backends.triton import launch
from dcr_kernels.precision import fp32_precision, gemm_precision, torch_fp32_precision, use_fp32_precision

INTERPRETER = os.environ.get("TRITON_INTERPRET") == "1"


@pytest.fixture(autouse=True)
def torch_default(monkeypatch):
    saved = torch.get_float32_matmul_precision()
    monkeypatch.delenv("DCR_INPUT_PRECISION", raising=False)
    yield
    torch.set_float32_matmul_precision(saved)


@pytest.mark.parametrize(
    ("torch_setting", "env", "override", "expected"),
    [
        ("highest", None, None, "ieee"),  # PyTorch's default: exact fp32, as its own GEMMs
        ("high", None, None, "tf32"),
        ("medium", None, None, "tf32"),
        ("highest", "tf32", None, "tf32"),  # the environment overrides PyTorch
        ("high", "ieee", None, "ieee"),
        ("high", "tf32", "ieee", "ieee"),  # the context overrides both
        ("highest", "ieee", "tf32", "tf32"),
    ],
)
def test_decision_table(monkeypatch, torch_setting, env, override, expected):
    torch.set_float32_matmul_precision(torch_setting)
    if env is not None:
        monkeypatch.setenv("DCR_INPUT_PRECISION", env)
    if override is None:
        assert fp32_precision() == expected
    else:
        with use_fp32_precision(override):
            assert fp32_precision() == expected
        assert fp32_precision() == (env or torch_fp32_precision())


def test_bad_values_are_refused(monkeypatch):
    with pytest.raises(ValueError, match="'tf32' or 'ieee'"), use_fp32_precision("fp16"):
        pass
    monkeypatch.setenv("DCR_INPUT_PRECISION", "bf16")
    with pytest.raises(ValueError, match="DCR_INPUT_PRECISION must be"):
        fp32_precision()


def test_gemm_precision_uses_the_setting_the_program_uses():
    """With PyTorch's newer per-backend setting in use, the override goes through it (the legacy getter would
    raise after it) and restores it."""
    matmul = torch.backends.cuda.matmul
    saved = matmul.fp32_precision
    try:
        matmul.fp32_precision = "tf32"
        assert torch_fp32_precision() == "tf32"
        with gemm_precision("ieee"):
            assert matmul.fp32_precision == "ieee" and torch_fp32_precision() == "ieee"
        assert matmul.fp32_precision == "tf32"
    finally:
        matmul.fp32_precision = saved


def test_gemm_precision_sets_and_restores_pytorch():
    torch.set_float32_matmul_precision("highest")
    with gemm_precision("tf32"):
        assert torch_fp32_precision() == "tf32"
    assert torch.get_float32_matmul_precision() == "highest"
    with gemm_precision("ieee"):
        assert torch.get_float32_matmul_precision() == "highest"


@pytest.mark.skipif(not INTERPRETER and not torch.cuda.is_available(), reason="needs the Triton interpreter or CUDA")
@pytest.mark.parametrize("torch_setting", ["highest", "high"])
@pytest.mark.parametrize("override", [None, "ieee", "tf32"])
def test_kernels_and_gemms_run_the_decision(monkeypatch, torch_setting, override):
    """Every kernel launch of a forward and backward gets the decided INPUT_PRECISION, and the backward's
    GEMMs run under the same PyTorch setting, even when the backward runs outside the override."""
    torch.set_float32_matmul_precision(torch_setting)
    expected = override or ("ieee" if torch_setting == "highest" else "tf32")
    seen = []
    real = launch._launch

    def record(kernel_name, *args, **constexprs):
        seen.append((kernel_name, constexprs["INPUT_PRECISION"], torch_fp32_precision()))
        return real(kernel_name, *args, **constexprs)

    monkeypatch.setattr(launch, "_launch", record)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    x = torch.randn(40, 24, device=device, requires_grad=True)
    labels = torch.arange(40, device=device) % 3
    if override is None:
        loss = dk.circle_loss(x, labels, backend="triton") + dk.info_nce(x, backend="triton")
    else:
        with use_fp32_precision(override):
            loss = dk.circle_loss(x, labels, backend="triton") + dk.info_nce(x, backend="triton")
    loss.backward()
    kernels = {name for name, _, _ in seen}
    assert kernels == {"similarity_stats_kernel", "pair_weights_kernel"}
    assert {precision for _, precision, _ in seen} == {expected}
    assert {gemm for name, _, gemm in seen if name == "pair_weights_kernel"} == {expected}
    assert torch.get_float32_matmul_precision() == torch_setting


@pytest.mark.skipif(not INTERPRETER and not torch.cuda.is_available(), reason="needs the Triton interpreter or CUDA")
def test_row_logsumexp_keeps_the_forward_decision_for_its_backward(monkeypatch):
    from dcr_kernels.row_lse import row_logsumexp

    seen = []
    real = launch._launch

    def record(kernel_name, *args, **constexprs):
        seen.append((kernel_name, constexprs["INPUT_PRECISION"]))
        return real(kernel_name, *args, **constexprs)

    monkeypatch.setattr(launch, "_launch", record)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    a = torch.randn(20, 16, device=device, requires_grad=True)
    b = torch.randn(30, 16, device=device, requires_grad=True)
    with use_fp32_precision("tf32"):
        lse = row_logsumexp(a, b, 2.0, backend="triton")
    lse.sum().backward()  # outside the override
    assert {name for name, _ in seen} == {"similarity_stats_kernel", "pair_weights_kernel"}
    assert {precision for _, precision in seen} == {"tf32"}
