"""guided_row_logsumexp against a dense float64 reference: the guide's threshold mask, the protected and
excluded columns, one tensor on both sides, rows without candidates, and chunking (a tiny chunk budget); the
Triton kernels' guide epilogue in the interpreter."""

from __future__ import annotations

import os

import pytest
import torch

from dcr_kernels.backends import triton_available
from dcr_kernels.guided_lse import guided_row_logsumexp


def _dense(a, b, ga, gb, s, threshold, protect, exclude):
    keep = (ga @ gb.T) <= threshold[:, None]
    if protect is not None:
        keep.diagonal(protect).fill_(True)
    if exclude is not None:
        keep.diagonal(exclude).fill_(False)
    return torch.logsumexp((s * (a @ b.T)).masked_fill(~keep, float("-inf")), dim=1)


@pytest.mark.parametrize(("protect", "exclude"), [(None, None), (0, None), (None, 0), (4, None), (None, -2), (2, 0)])
@pytest.mark.parametrize("same", [False, True])
@pytest.mark.parametrize("chunk_bytes", [None, "2000"])
def test_matches_dense_reference(protect, exclude, same, chunk_bytes, monkeypatch):
    if chunk_bytes:  # a few rows per chunk
        monkeypatch.setenv("DCR_CHUNK_BYTES", chunk_bytes)
    gen = torch.Generator().manual_seed(int(torch.randint(0, 2**31, ())))
    m, n, d = 23, 23 if same else 31, 9
    a = torch.randn(m, d, generator=gen, dtype=torch.float64).requires_grad_()
    b = a if same else torch.randn(n, d, generator=gen, dtype=torch.float64).requires_grad_()
    ga = torch.randn(m, 5, generator=gen, dtype=torch.float64)
    gb = ga if same else torch.randn(n, 5, generator=gen, dtype=torch.float64)
    threshold = torch.randn(m, generator=gen, dtype=torch.float64)
    threshold[0] = -1e9  # a row whose only candidate is the protected one, or none
    s = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    got = guided_row_logsumexp(a, b, ga, gb, s, threshold, protect_offset=protect, exclude_offset=exclude)
    want = _dense(a, b, ga, gb, s, threshold, protect, exclude)
    finite = torch.isfinite(want)
    assert torch.equal(torch.isfinite(got), finite)
    torch.testing.assert_close(got[finite], want[finite], rtol=1e-12, atol=1e-12)
    w = torch.randn(m, generator=gen, dtype=torch.float64)
    inputs = [a, s] if same else [a, b, s]
    for g, h in zip(
        torch.autograd.grad((got[finite] * w[finite]).sum(), inputs),
        torch.autograd.grad((want[finite] * w[finite]).sum(), inputs),
        strict=True,
    ):
        torch.testing.assert_close(g, h, rtol=1e-10, atol=1e-12)


def test_bad_shapes_are_refused():
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match="guide's rows must pair"):
        guided_row_logsumexp(x, x, torch.randn(3, 2), torch.randn(4, 2), 1.0, torch.zeros(4))
    with pytest.raises(ValueError, match="threshold must have shape"):
        guided_row_logsumexp(x, x, x, x, 1.0, torch.zeros(3))


def _kernels_runnable() -> bool:
    return triton_available() and (torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1")


@pytest.mark.interpreter
@pytest.mark.skipif(not _kernels_runnable(), reason="needs Triton on a GPU or in the interpreter")
@pytest.mark.parametrize(("protect", "exclude"), [(None, None), (0, None), (None, 0), (3, -2)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_guide_epilogue_matches_dense(protect, exclude, dtype):
    """The kernels form the guide's similarities in each tile beside the model's (a second GEMM over the
    guide's own dim, fp32 whatever the model's dtype): values and gradients of a, b and s against the dense
    float64 reference, over several row blocks, column splits and a row without candidates."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    gen = torch.Generator().manual_seed(int(torch.randint(0, 2**31, ())))
    m, n, d, dg = 37, 70, 20, 9
    a64, b64 = (torch.nn.functional.normalize(torch.randn(r, d, generator=gen, dtype=torch.float64), dim=1)
                for r in (m, n))  # fmt: skip
    ga, gb = (torch.randn(r, dg, generator=gen, dtype=torch.float64) for r in (m, n))
    threshold = torch.randn(m, generator=gen, dtype=torch.float64)
    threshold[0] = -1e9  # only the protected pair, or none
    a, b = (x.to(device=device, dtype=dtype).requires_grad_() for x in (a64, b64))
    s = torch.tensor(5.0, device=device, requires_grad=True)
    got = guided_row_logsumexp(
        a, b, ga.float().to(device), gb.float().to(device), s, threshold.float().to(device),
        protect_offset=protect, exclude_offset=exclude, backend="triton",
    )  # fmt: skip
    exact = [x.to(dtype).double().requires_grad_() for x in (a64, b64)]
    s64 = torch.tensor(5.0, dtype=torch.float64, requires_grad=True)
    want = _dense(*exact, ga.float().double(), gb.float().double(), s64, threshold.float().double(), protect, exclude)
    finite = torch.isfinite(want)
    assert torch.equal(torch.isfinite(got.cpu()), finite)
    tol = 1e-4 if device == "cpu" else 5e-3  # the interpreter computes fp32 dots exactly; a GPU in tf32
    torch.testing.assert_close(got.cpu().double()[finite], want[finite], rtol=tol, atol=tol)
    w = torch.randn(m, generator=gen, dtype=torch.float64)
    grads = torch.autograd.grad((got.cpu().double()[finite] * w[finite]).sum(), [a, b, s])
    wants = torch.autograd.grad((want[finite] * w[finite]).sum(), [*exact, s64])
    for g, h in zip(grads, wants, strict=True):
        err = float((g.cpu().double() - h).norm() / h.norm())
        assert err < (1e-4 if dtype == torch.float32 else 1e-2), err
