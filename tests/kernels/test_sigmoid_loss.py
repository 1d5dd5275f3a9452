"""The pairwise sigmoid loss (SigLIP) against a dense float64 reference written from the paper's formula:
values and gradients of queries, keys, a learnable scale and bias, every reduction, weights, extra key rows,
explicit positives, B = 1, the chunked and reference backends, and clear errors."""

from __future__ import annotations

import pytest
import torch

import dcr_kernels as dk


def _paper(q, k, positive, t, b, normalize):
    if normalize:
        q, k = torch.nn.functional.normalize(q, dim=-1), torch.nn.functional.normalize(k, dim=-1)
    labels = -torch.ones(q.shape[0], k.shape[0], dtype=q.dtype)
    labels[torch.arange(q.shape[0]), positive] = 1.0
    return -torch.nn.functional.logsigmoid(labels * (t * q @ k.T + b)).sum(dim=1)


@pytest.mark.parametrize("backend", ["chunked", "reference"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize(("m", "n", "d"), [(1, 1, 3), (29, 29, 17), (29, 45, 8)])
@pytest.mark.parametrize("normalize", [True, False])
def test_matches_the_paper(backend, reduction, m, n, d, normalize, monkeypatch):
    monkeypatch.setenv("DCR_CHUNK_BYTES", "4000")  # several chunks
    gen = torch.Generator().manual_seed(int(torch.randint(0, 2**31, ())))
    q = torch.randn(m, d, generator=gen, dtype=torch.float64).requires_grad_()
    k = torch.randn(n, d, generator=gen, dtype=torch.float64).requires_grad_()
    t = torch.tensor(7.0, dtype=torch.float64, requires_grad=True)
    b = torch.tensor(-4.0, dtype=torch.float64, requires_grad=True)
    w = torch.rand(m, generator=gen, dtype=torch.float64)
    positive = torch.randperm(n, generator=gen)[:m]
    got = dk.sigmoid_loss(q, k, positive=positive, scale=t, bias=b, normalize=normalize, weight=w,
                          reduction=reduction, backend=backend)  # fmt: skip
    rows = _paper(q, k, positive, t, b, normalize) * w
    want = {"mean": rows.sum() / w.sum(), "sum": rows.sum(), "none": rows}[reduction]
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    probe = torch.randn(got.shape, generator=gen, dtype=torch.float64)
    for g, h in zip(torch.autograd.grad((got * probe).sum(), [q, k, t, b]),
                    torch.autograd.grad((want * probe).sum(), [q, k, t, b]), strict=True):  # fmt: skip
        torch.testing.assert_close(g, h, rtol=1e-10, atol=1e-12)


def test_default_positives_and_open_clip_normalisation():
    """positive[i] = i and mean over rows: OpenCLIP's -logsigmoid(labels * logits).sum() / B."""
    q, k = torch.randn(6, 4, dtype=torch.float64), torch.randn(6, 4, dtype=torch.float64)
    want = _paper(q, k, torch.arange(6), 10.0, -10.0, True).sum() / 6
    torch.testing.assert_close(dk.sigmoid_loss(q, k), want, rtol=1e-12, atol=0)


def test_bad_input_is_refused():
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match="key is required"):
        dk.sigmoid_loss(x, None)
    with pytest.raises(ValueError, match="scale must be finite"):
        dk.sigmoid_loss(x, x, scale=float("inf"))
    with pytest.raises(ValueError, match="NaN or Inf"):
        dk.sigmoid_loss(x, torch.full_like(x, float("nan")))
    with pytest.raises(ValueError, match="positive indices must lie"):
        dk.sigmoid_loss(x, x, positive=torch.tensor([0, 1, 2, 9]))


@pytest.mark.parametrize("backend", ["chunked", "triton"])
def test_one_tensor_as_queries_and_keys_gets_both_sides_gradient(backend):
    """sigmoid_loss(x, x): x's gradient is its query side's plus its key side's, as with a copy for the keys
    (the block primitives' self mode, which shares one W between both sides, does not apply)."""
    if backend == "triton" and not dk.backends.triton_available():
        pytest.skip("Triton is not installed")
    dtype = torch.float64 if backend == "chunked" else torch.float32
    x = torch.randn(9, 5, dtype=dtype, requires_grad=True)
    dk.sigmoid_loss(x, x, normalize=False, backend=backend).backward()
    reference = x.detach().clone().requires_grad_()
    keys = x.detach().clone().requires_grad_()
    dk.sigmoid_loss(reference, keys, normalize=False, backend=backend).backward()
    torch.testing.assert_close(x.grad, reference.grad + keys.grad)
