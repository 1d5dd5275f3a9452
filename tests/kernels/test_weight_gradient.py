"""Learnable per-row weights: their gradient (and the embeddings') equals the dense float64 reference in
every backend and reduction (the fused totals treat the weights as constants, so such calls take the per-row
path)."""

from __future__ import annotations

import pytest
import torch

import dcr_kernels as dk

LABELS = torch.tensor([0, 1, 0, 1, 2, 2, 3])


def _calls(x, w, backend, reduction):
    kw = dict(weight=w, backend=backend, reduction=reduction)
    return {
        "info_nce cross": dk.info_nce(x[:7], x[7:14], **kw),
        "info_nce symmetric": dk.info_nce(x[:7], x[7:14], symmetric=True, **kw),
        "info_nce self": dk.info_nce(x[:14], weight=torch.cat([w, w]), backend=backend, reduction=reduction),
        "supcon": dk.supcon_loss(x[:7], LABELS, **kw),
        "circle": dk.circle_loss(x[:7], LABELS, **kw),
        "sigmoid": dk.sigmoid_loss(x[:7], x[7:14], **kw),
    }


@pytest.mark.parametrize("backend", ["chunked", "triton"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_weight_gradients_match_the_reference(backend, reduction):
    gen = torch.Generator().manual_seed(int(torch.randint(0, 2**31, ())))
    dtype = torch.float64 if backend == "chunked" else torch.float32
    x0 = torch.randn(14, 9, generator=gen, dtype=torch.float64)
    w0 = torch.rand(7, generator=gen, dtype=torch.float64) + 0.1
    tol = 1e-7 if dtype == torch.float64 else 1e-4  # relative to the norm, as tests/kernels/test_backends.py
    for name in _calls(x0, w0, "reference", reduction):
        results = []
        for b, dt in ((backend, dtype), ("reference", torch.float64)):
            x, w = x0.to(dt).requires_grad_(), w0.to(dt).requires_grad_()
            out = _calls(x, w, b, reduction)[name]
            results.append([out.double(), *(g.double() for g in torch.autograd.grad(out, [x, w]))])
        for got, want in zip(*results, strict=True):
            assert float((got - want).norm() / want.norm().clamp_min(1e-30)) < tol, name
