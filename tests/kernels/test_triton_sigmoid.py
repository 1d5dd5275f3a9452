"""The sigmoid loss (SigLIP) through the Triton kernels' sigmoid epilogues, against the paper's formula in
float64: values and gradients of queries, keys, scale and bias, several row blocks, column splits and
workspace blocks, extra key rows, explicit positives, B = 1, 16-bit inputs. On a GPU when there is one,
else in the interpreter (TRITON_INTERPRET=1, set by conftest.py)."""

from __future__ import annotations

import os

import pytest
import torch
from test_sigmoid_loss import _paper

import dcr_kernels as dk

triton = pytest.importorskip("triton")
from dcr_kernels.backends.triton import launch  # noqa: E402

ON_GPU = torch.cuda.is_available()
DEVICE = "cuda" if ON_GPU else "cpu"
if not ON_GPU and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("no GPU and the Triton interpreter is off", allow_module_level=True)


@pytest.fixture
def launches(monkeypatch):
    """The kernels the call launched, by name and loss family."""
    seen, real = [], launch._launch

    def record(name, *args, **kw):
        seen.append((name, kw["LOSS"]))
        return real(name, *args, **kw)

    monkeypatch.setattr(launch, "_launch", record)
    return seen


@pytest.mark.parametrize(("m", "n", "d"), [(1, 1, 3), (29, 45, 20), (37, 20, 16), (70, 130, 40), (200, 300, 24)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_matches_the_paper(m, n, d, dtype, launches, monkeypatch):
    if m == 200:
        monkeypatch.setenv("DCR_TRITON_WORKSPACE_MB", "0.07")  # 128 x 128 blocks of W: 2 x 3 of them
    gen = torch.Generator().manual_seed(int(torch.randint(0, 2**31, ())))
    q64, k64 = (
        torch.randn(m, d, generator=gen, dtype=torch.float64),
        torch.randn(n, d, generator=gen, dtype=torch.float64),
    )
    q64, k64 = (x.div(d**0.5).to(dtype).double() for x in (q64, k64))  # |S| ~ 1; the values the kernels see
    positive = torch.randperm(n, generator=gen)[:m] if n >= m else torch.randint(0, n, (m,), generator=gen)
    probe = torch.randn(m, generator=gen, dtype=torch.float64)

    normalize = dtype == torch.float32  # 16-bit: the kernels' W, not the 16-bit normalisation's cancellations

    def run(q, k, t, b, **kw):
        rows = dk.sigmoid_loss(
            q, k, positive=positive.to(q.device), scale=t, bias=b, reduction="none", normalize=normalize, **kw
        )
        grads = torch.autograd.grad((rows.double() * probe.to(rows.device)).sum(), [q, k, t, b])
        return rows.double().cpu(), [g.double().cpu() for g in grads]

    def leaves(x_dtype, device, scalar_dtype):
        q = q64.to(device=device, dtype=x_dtype).requires_grad_()
        k = k64.to(device=device, dtype=x_dtype).requires_grad_()
        t = torch.tensor(7.0, dtype=scalar_dtype, device=device, requires_grad=True)
        b = torch.tensor(-4.0, dtype=scalar_dtype, device=device, requires_grad=True)
        return q, k, t, b

    got, got_grads = run(*leaves(dtype, DEVICE, torch.float32), backend="triton")
    if dtype == torch.float32:  # against the paper's formula in float64
        q, k, t, b = leaves(torch.float64, "cpu", torch.float64)
        want = _paper(q, k, positive, t, b, normalize=True)
        want_grads = list(torch.autograd.grad((want * probe).sum(), [q, k, t, b]))
        want, tol = want.detach(), (1e-4 if not ON_GPU else 5e-3)
    else:  # 16-bit inputs are normalised in 16 bits: against the chunked backend on the same inputs
        want, want_grads = run(*leaves(dtype, "cpu", torch.float32), backend="chunked")
        tol = 2e-2  # W is held in bf16 for the backward's GEMMs, as for every loss
    torch.testing.assert_close(got, want, rtol=tol, atol=tol * float(want.abs().max()))
    for name, g, h in zip("qktb", got_grads, want_grads, strict=True):
        err = float((g - h).norm() / h.norm().clamp_min(1e-12))
        assert err < tol, f"d{name}: relative error {err:.2e}"
    assert {loss for _, loss in launches} == {2} and {name for name, _ in launches} == {
        "similarity_stats_kernel",
        "pair_weights_kernel",
    }


@pytest.mark.parametrize("tile", [(32, 32, 32), (64, 128, 32)], ids=["32x32", "64x128"])
@pytest.mark.parametrize(("t", "b", "aligned"), [(7.0, -4.0, False), (100.0, -20.0, False), (30.0, 30.0, False),
                                                 (100.0, -60.0, True)])  # fmt: skip
def test_row_sums_are_accurate_at_any_logit(tile, t, b, aligned, monkeypatch):
    """Each row's sum to a relative 1e-4 of the float64 formula, never negative, with the widest tile the GPU
    configs use (128 columns: the longest product of factors), from logits where most terms are large to a
    trained model's (`aligned`: each query equals its positive key, D = 256, so every term is below 2^-24,
    which 1 + e^-|x| would drop, and a row's sum is about 1e-15)."""
    if not ON_GPU:
        monkeypatch.setattr(
            launch, "_INTERPRETER_META", dict(zip(("BLOCK_M", "BLOCK_N", "BLOCK_K"), tile, strict=True))
        )
    gen = torch.Generator().manual_seed(int(torch.randint(0, 2**31, ())))
    d = 256 if aligned else 24
    q, k = (
        torch.randn(70, d, generator=gen, dtype=torch.float64),
        torch.randn(300, d, generator=gen, dtype=torch.float64),
    )
    positive = torch.randperm(300, generator=gen)[:70]
    if aligned:
        q = k[positive].clone()
    want = _paper(q, k, positive, torch.tensor(t, dtype=torch.float64), torch.tensor(b, dtype=torch.float64), True)
    with torch.no_grad():
        got = dk.sigmoid_loss(q.float().to(DEVICE), k.float().to(DEVICE), positive=positive.to(DEVICE), scale=t,
                              bias=b, reduction="none", backend="triton").double().cpu()  # fmt: skip
    assert bool((got >= 0).all())
    err = ((got - want).abs() / want.abs().clamp_min(1e-30)).max()
    # fp32 bounds it: a term e^x moves by t |dS| relatively, about 100 x 2^-24 x a few at t = 100
    assert err < 1e-4, f"largest relative error of a row: {float(err):.2e}"
