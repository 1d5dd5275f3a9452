"""row_logsumexp against the dense float64 reference: values and gradients of A, B and the scale, with and
without an excluded diagonal (any offset), one tensor on both sides, every backend (Triton: the interpreter)."""

from __future__ import annotations

import pytest
import torch

from dcr_kernels.row_lse import row_logsumexp

BACKENDS = ["chunked", "triton"]


def _dense(a, b, s, offset):
    z = s * (a @ b.T)
    if offset is not None:
        mask = torch.zeros_like(z, dtype=torch.bool)
        mask.diagonal(offset).fill_(True)
        z = z.masked_fill(mask, float("-inf"))
    return torch.logsumexp(z, dim=1)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("offset", [None, 0, 5, -3])
@pytest.mark.parametrize("same", [False, True])
@pytest.mark.parametrize(("m", "n", "d"), [(1, 1, 3), (37, 70, 19), (70, 37, 33)])
def test_matches_dense_reference(backend, offset, same, m, n, d):
    gen = torch.Generator().manual_seed(int(torch.randint(0, 2**31, ())))
    dtype = torch.float64 if backend == "chunked" else torch.float32
    a = torch.randn(m, d, generator=gen, dtype=dtype).requires_grad_()
    b = a if same else torch.randn(n, d, generator=gen, dtype=dtype).requires_grad_()
    s = torch.tensor(3.0, dtype=dtype, requires_grad=True)
    w = torch.randn(m, generator=gen, dtype=dtype)
    got = row_logsumexp(a, b, s, exclude_offset=offset, backend=backend)
    want = _dense(a.double(), b.double(), s.double(), offset)
    finite = torch.isfinite(want)
    assert torch.equal(torch.isfinite(got), finite)  # -inf where a row has no candidate (m = n = 1, diagonal)
    tol = dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got[finite].double(), want[finite], **tol)
    inputs = [a, s] if same else [a, b, s]
    got_grads = torch.autograd.grad((got[finite] * w[finite]).sum(), inputs, allow_unused=True)
    want_grads = torch.autograd.grad((want[finite] * w[finite].double()).sum(), inputs, allow_unused=True)
    for g, h in zip(got_grads, want_grads, strict=True):
        if h is None or not finite.any():
            continue
        torch.testing.assert_close(g.double(), h.double(), **tol)


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="2-D with one dim"):
        row_logsumexp(torch.randn(3, 4), torch.randn(3, 5), 1.0)
    with pytest.raises(ValueError, match="differ in dtype"):
        row_logsumexp(torch.randn(3, 4), torch.randn(3, 4, dtype=torch.float64), 1.0)
