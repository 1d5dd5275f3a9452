"""The chunked Circle pass sorts queries and keys by label: results must come back in the callers' order,
whatever the label layout and the chunking."""

import oracle
import pytest
import torch

import dcr_kernels as dk


@pytest.mark.parametrize("chunk_bytes", [None, "1", "300"])
def test_cross_mode_with_labels_missing_on_either_side(chunk_bytes, monkeypatch):
    """Query labels absent from the keys (rows without positives), key labels absent from the queries,
    unsorted and negative label ids, chunks that cut label runs."""
    if chunk_bytes is not None:
        monkeypatch.setenv("DCR_CHUNK_BYTES", chunk_bytes)
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(23, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    k = torch.randn(17, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(-2, 5, (23,), generator=gen)
    key_labels = torch.randint(0, 8, (17,), generator=gen)
    weight = torch.rand(23, generator=gen, dtype=torch.float64)
    proj = torch.randn(23, generator=gen, dtype=torch.float64)
    for reduction in ("mean", "none"):
        got = dk.circle_loss(q, labels, k, key_labels, weight=weight, reduction=reduction, backend="chunked")
        want = oracle.circle(q, labels, k, key_labels, weight=weight, reduction=reduction)
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
        got_grads = torch.autograd.grad((got * proj).sum() if reduction == "none" else got, (q, k))
        want_grads = torch.autograd.grad((want * proj).sum() if reduction == "none" else want, (q, k))
        for g, w in zip(got_grads, want_grads, strict=True):
            torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("key", [False, True])
def test_argmax_metrics_map_back_through_the_sort(key):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(40, 8, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, 5, (40,), generator=gen)
    args = (x, labels, x.flip(0), labels.flip(0)) if key else (x, labels)
    got = dk.circle_loss(*args, backend="chunked", return_metrics=True)
    want = dk.circle_loss(*args, backend="reference", return_metrics=True)
    assert (got.rows_counted, got.rows_dropped) == (want.rows_counted, want.rows_dropped)
    assert got.accuracy.item() == pytest.approx(want.accuracy.item())
