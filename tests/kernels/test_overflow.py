"""Overflowing similarities never give a silent wrong value: at embedding scales 1e10 and 1e20 and a
temperature of 1e-30, every backend either computes a finite loss and finite gradients that agree with the
float64 reference, or raises a ValueError that says what overflows and what to do."""

import os

import pytest
import torch

import dcr_kernels as dk

BACKENDS = ["reference", "chunked"]
if os.environ.get("TRITON_INTERPRET") == "1" or torch.cuda.is_available():
    BACKENDS.append("triton")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
LABELS = torch.arange(24) % 4


def _losses(labels):
    return {
        "info_nce": lambda x, **kw: dk.info_nce(x, normalize=False, **kw),
        "supcon": lambda x, **kw: dk.supcon_loss(x, labels, normalize=False, **kw),
        "circle": lambda x, **kw: dk.circle_loss(x, labels, normalize=False, **kw),
    }


def _run(fn, x, backend):
    x = x.clone().requires_grad_()
    loss = fn(x, backend=backend)
    loss.backward()
    return loss.detach(), x.grad


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("loss", ["info_nce", "supcon", "circle"])
@pytest.mark.parametrize("scale", [1e10, 1e20])
def test_unnormalised_scales_compute_finitely_or_raise(backend, loss, scale):
    gen = torch.Generator().manual_seed(int(torch.randint(0, 2**31, ())))
    x = torch.randn(24, 20, generator=gen) * scale
    fn = _losses(LABELS.to(DEVICE))[loss]
    x32 = x.to(DEVICE, torch.float32)
    try:
        value, grad = _run(fn, x32, backend)
    except ValueError as e:
        assert "overflow" in str(e) and "normalize=True" in str(e)
        # the float32 reference refuses too: the same behaviour in every backend
        with pytest.raises(ValueError, match="overflow"):
            _run(fn, x32.cpu(), "reference")
        return
    assert torch.isfinite(value).all() and torch.isfinite(grad).all()
    ref_value, ref_grad = _run(fn, x.double(), "reference")
    assert float(abs(value.double().cpu() - ref_value) / abs(ref_value)) < 1e-4
    assert float((grad.double().cpu() - ref_grad).norm() / ref_grad.norm()) < 1e-3


@pytest.mark.parametrize("backend", BACKENDS)
def test_tiny_temperature_raises_when_learnt_and_stays_finite_when_fixed(backend):
    x = torch.nn.functional.normalize(torch.randn(24, 20), dim=1).to(DEVICE)
    learnt = torch.tensor(1e-30, device=DEVICE, requires_grad=True)
    for call in (
        lambda t: dk.info_nce(x, temperature=t, backend=backend),
        lambda t: dk.supcon_loss(x, LABELS.to(DEVICE), temperature=t, backend=backend),
    ):
        with pytest.raises(ValueError, match="too small to learn"):
            call(learnt)
        xg = x.clone().requires_grad_()
        value = dk.info_nce(xg, temperature=1e-30, backend=backend)
        value.backward()
        assert torch.isfinite(value) and torch.isfinite(xg.grad).all()


def test_float64_computes_what_float32_cannot():
    """The check follows the compute dtype: float64 holds the logits that overflow float32."""
    x = torch.randn(24, 20, dtype=torch.float64) * 1e10
    value, grad = _run(_losses(LABELS)["circle"], x, "chunked")
    assert torch.isfinite(value) and torch.isfinite(grad).all()
