"""The block primitives (`backends.blocks`), which the distributed losses, `row_logsumexp`,
`guided_row_logsumexp` and `sigmoid_rows` are written over: the row-chunked PyTorch version (`backends.tiles`)
against dense float64 autograd for every loss family, and the Triton kernels against it (in the interpreter
when there is no GPU)."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

from dcr_kernels.backends import blocks, triton_available
from dcr_kernels.backends.base import CIRCLE, SIGMOID, SOFTMAX, Pairs
from dcr_kernels.pair_terms import circle_logits, sigmoid_terms

OFFSETS = [None, 0, 3, -2]
MARGIN, GAMMA = 0.25, 16.0


def _inputs(m: int, n: int, d: int, dtype: torch.dtype, seed: int):
    gen = torch.Generator().manual_seed(seed)
    a = F.normalize(torch.randn(m, d, generator=gen, dtype=torch.float64), dim=1).to(dtype)
    b = F.normalize(torch.randn(n, d, generator=gen, dtype=torch.float64), dim=1).to(dtype)
    labels_a, labels_b = torch.randint(0, 3, (m,), generator=gen), torch.randint(0, 3, (n,), generator=gen)
    return a, b, labels_a, labels_b, torch.tensor(3.0, dtype=dtype)


def _dense_stats(a, b, loss, offset, scale, labels_a, labels_b):
    """Row statistics of a b^T with plain dense autograd ops (alpha detached for Circle)."""
    sim = a @ b.T
    valid = torch.ones_like(sim, dtype=torch.bool)
    if offset is not None:
        valid.diagonal(offset).fill_(False)
    if loss == SOFTMAX:
        return torch.logsumexp((sim * scale).masked_fill(~valid, float("-inf")), dim=1), None, sim, valid
    same = labels_a[:, None] == labels_b[None, :]
    z_pos, z_neg, _, _ = circle_logits(sim, MARGIN, GAMMA)
    lse_pos = torch.logsumexp(z_pos.masked_fill(~(valid & same), float("-inf")), dim=1)
    lse_neg = torch.logsumexp(z_neg.masked_fill(~(valid & ~same), float("-inf")), dim=1)
    return lse_pos, lse_neg, sim, valid


def _safe(x):
    return None if x is None else torch.where(torch.isfinite(x), x, float("inf")).detach()


def _terms(a, b, loss, offset, scale, labels_a, labels_b, gen):
    """Row and column terms: final statistics of a's rows and of b's rows, and random coefficients."""
    rows = _dense_stats(a, b, loss, offset, scale, labels_a, labels_b)
    cols = _dense_stats(b, a, loss, None if offset is None else -offset, scale, labels_b, labels_a)
    coef_a = torch.rand(a.shape[0], generator=gen, dtype=torch.float64).to(a.dtype)
    coef_b = torch.rand(b.shape[0], generator=gen, dtype=torch.float64).to(a.dtype)
    return (_safe(rows[0]), _safe(rows[1]), coef_a), (_safe(cols[0]), _safe(cols[1]), coef_b)


def _pairs(loss, offset, scale, labels_a, labels_b) -> Pairs:
    return Pairs(loss, offset, scale, labels_a, labels_b, MARGIN, GAMMA)


@pytest.mark.parametrize("loss", [SOFTMAX, CIRCLE])
@pytest.mark.parametrize("offset", OFFSETS)
@pytest.mark.parametrize("chunk_bytes", [None, 600])  # 600 bytes: one or two rows per chunk
def test_chunked_matches_dense_float64(loss, offset, chunk_bytes, monkeypatch):
    if chunk_bytes:
        monkeypatch.setenv("DCR_CHUNK_BYTES", str(chunk_bytes))
    a, b, labels_a, labels_b, scale = _inputs(7, 9, 5, torch.float64, seed=1)
    pairs = _pairs(loss, offset, scale, labels_a, labels_b)
    got = blocks.rows_forward(a, b, pairs, backend="chunked")
    stat1, stat2, sim, valid = _dense_stats(a, b, loss, offset, scale, labels_a, labels_b)
    torch.testing.assert_close(got.stat1, stat1, rtol=1e-12, atol=0)
    if loss == CIRCLE:
        torch.testing.assert_close(got.stat2, stat2, rtol=1e-12, atol=0)
    torch.testing.assert_close(got.best, sim.masked_fill(~valid, float("-inf")).max(dim=1).values)
    torch.testing.assert_close(sim.gather(1, got.argmax[:, None]).squeeze(1), got.best)

    row, col = _terms(a, b, loss, offset, scale, labels_a, labels_b, torch.Generator().manual_seed(2))
    a_, b_, s_ = a.clone().requires_grad_(), b.clone().requires_grad_(), scale.clone().requires_grad_()
    rows = _dense_stats(a_, b_, loss, offset, s_, labels_a, labels_b)
    cols = _dense_stats(b_, a_, loss, None if offset is None else -offset, s_, labels_b, labels_a)
    total = sum(
        (coef * torch.where(torch.isfinite(stat), stat, 0.0)).sum()
        for coef, stat in [(row[2], rows[0]), (row[2], rows[1]), (col[2], cols[0]), (col[2], cols[1])]
        if stat is not None
    )
    want_da, want_db, want_ds = torch.autograd.grad(total, [a_, b_, s_], allow_unused=True)
    da, db, ds = blocks.rows_backward(a, b, pairs, row, col, want_db=True, backend="chunked")
    torch.testing.assert_close(da, want_da, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(db, want_db, rtol=1e-10, atol=1e-12)
    if loss == SOFTMAX:
        torch.testing.assert_close(ds, want_ds, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("offset", OFFSETS)
def test_sigmoid_family_matches_dense_float64(offset, monkeypatch):
    """The sigmoid loss's rows over the candidates (its positive column as the row's label, the columns'
    indices as theirs), and the gradients of a, b, t and the bias from per-row coefficients."""
    monkeypatch.setenv("DCR_CHUNK_BYTES", "900")  # a few rows per chunk
    a, b, _, _, _ = _inputs(7, 9, 5, torch.float64, seed=7)
    gen = torch.Generator().manual_seed(8)
    positive, columns = torch.randint(0, 9, (7,), generator=gen), torch.arange(9)
    tb = torch.tensor([4.0, -2.5], dtype=torch.float64)
    coef = torch.rand(7, generator=gen, dtype=torch.float64)
    pairs = Pairs(SIGMOID, offset, tb, positive, columns)

    a_, b_, tb_ = a.clone().requires_grad_(), b.clone().requires_grad_(), tb.clone().requires_grad_()
    terms, _ = sigmoid_terms(tb_[0] * (a_ @ b_.T) + tb_[1], positive[:, None] == columns[None, :])
    valid = torch.ones_like(terms, dtype=torch.bool)
    if offset is not None:
        valid.diagonal(offset).fill_(False)
    rows = terms.masked_fill(~valid, 0.0).sum(dim=1)
    got = blocks.rows_forward(a, b, pairs, backend="chunked")
    torch.testing.assert_close(got.stat1, rows.detach(), rtol=1e-12, atol=1e-14)
    want = torch.autograd.grad((coef * rows).sum(), [a_, b_, tb_])
    da, db, dtb = blocks.rows_backward(a, b, pairs, (rows.detach(), None, coef), None, want_db=True, backend="chunked")
    for x, y in zip((da, db, dtb), want, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-12)


def test_same_rows_counts_the_scale_gradient_once():
    """With a is b (self mode) both terms take one pass, and d loss / d s counts the row term only."""
    a, _, labels, _, scale = _inputs(6, 6, 4, torch.float64, seed=3)
    pairs = _pairs(SOFTMAX, 0, scale, labels, labels)
    row, _ = _terms(a, a, SOFTMAX, 0, scale, labels, labels, torch.Generator().manual_seed(4))
    da_same, _, ds_same = blocks.rows_backward(a, a, pairs, row, row, backend="chunked")
    da_two, _, ds_two = blocks.rows_backward(a, a.clone(), pairs, row, row, backend="chunked")
    _, _, ds_row = blocks.rows_backward(a, a, pairs, row, None, backend="chunked")
    torch.testing.assert_close(da_same, da_two)
    torch.testing.assert_close(ds_same, ds_row)
    torch.testing.assert_close(ds_two, 2 * ds_row)


def _kernels_runnable() -> bool:
    return triton_available() and (torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1")


@pytest.mark.interpreter
@pytest.mark.skipif(not _kernels_runnable(), reason="needs Triton on a GPU or in the interpreter")
@pytest.mark.parametrize("loss", [SOFTMAX, CIRCLE])
@pytest.mark.parametrize("offset", OFFSETS)
def test_triton_matches_chunked(loss, offset):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    a, b, labels_a, labels_b, scale = (t.to(device) for t in _inputs(37, 45, 20, torch.float32, seed=5))
    pairs = _pairs(loss, offset, scale, labels_a, labels_b)
    want = blocks.rows_forward(a, b, pairs, backend="chunked")
    got = blocks.rows_forward(a, b, pairs, backend="triton")
    tol = dict(rtol=1e-4, atol=1e-4) if device == "cpu" else dict(rtol=5e-3, atol=5e-3)
    for x, y in [(got.stat1, want.stat1), (got.stat2, want.stat2), (got.best, want.best)]:
        if y is not None:
            torch.testing.assert_close(x, y, **tol)
    assert (got.argmax == want.argmax).float().mean() > 0.95  # ties under tf32 may pick another column
    row, col = _terms(a, b, loss, offset, scale, labels_a, labels_b, torch.Generator().manual_seed(6))
    row, col = [tuple(None if t is None else t.to(device) for t in term) for term in (row, col)]
    da, db, ds = blocks.rows_backward(a, b, pairs, row, col, want_db=True, backend="triton")
    want = blocks.rows_backward(a, b, pairs, row, col, want_db=True, backend="chunked")
    want_da, want_db, want_ds = want
    assert float((da - want_da).norm() / want_da.norm()) < tol["rtol"]
    assert float((db - want_db).norm() / want_db.norm()) < tol["rtol"]
    torch.testing.assert_close(ds.to(want_ds.dtype), want_ds, **tol)


def test_auto_runs_cpu_and_float64_in_pytorch(monkeypatch):
    a = torch.randn(3, 4)
    assert not blocks.use_triton(a, "auto")
    assert not blocks.use_triton(a.double(), "triton")
    with pytest.raises(ValueError, match="backend must be one of"):
        blocks.use_triton(a, "dense")


@pytest.mark.skipif(not _kernels_runnable(), reason="needs Triton on a GPU or in the interpreter")
def test_environment_variable_decides_for_the_blocks_too(monkeypatch):
    """One dispatcher: DCR_BACKEND steers the block primitives as it steers the functional API."""
    a = torch.randn(3, 4, device="cuda" if torch.cuda.is_available() else "cpu")
    monkeypatch.setenv("DCR_BACKEND", "triton")
    assert blocks.use_triton(a, "auto")
    monkeypatch.setenv("DCR_BACKEND", "chunked")
    assert not blocks.use_triton(a, "auto")
