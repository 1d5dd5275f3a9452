"""Self mode by symmetry in the chunked backend: the strips on and above the block diagonal of S, row and
column statistics merged across strips, W for an entry and its transpose. The path is taken from
_SELF_SYMMETRY_MIN_ROWS rows on; here the threshold is lowered so that small batches take it, and tiny
memory budgets cut them into many strips (batches that are not a multiple of the chunk)."""

import pytest
import torch
from cases import assert_close_to_oracle, make_case

import dcr_kernels as dk
from dcr_kernels.backends import chunked, reference

LOSSES = ["info_nce", "supcon", "circle"]


@pytest.fixture(autouse=True)
def symmetric_path(monkeypatch):
    monkeypatch.setattr(chunked, "_SELF_SYMMETRY_MIN_ROWS", 0)


def _budget(monkeypatch, chunk_bytes):
    if chunk_bytes is None:
        monkeypatch.delenv("DCR_CHUNK_BYTES", raising=False)
    else:
        monkeypatch.setenv("DCR_CHUNK_BYTES", chunk_bytes)


@pytest.mark.parametrize("chunk_bytes", [None, "1", "300", "2000"])
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("b", [1, 2, 3, 7, 33, 100])
def test_float64_matches_oracle(loss, b, chunk_bytes, monkeypatch):
    if loss == "info_nce" and b == 1:
        pytest.skip("self-mode InfoNCE needs a second row")
    _budget(monkeypatch, chunk_bytes)
    for i, (reduction, layout, weighted) in enumerate(
        [("mean", "two_classes", False), ("none", "many_classes", True), ("sum", "singletons", True)]
    ):
        case = make_case(loss, "self", b, 6, seed=1000 * b + i, layout=layout, reduction=reduction, weighted=weighted)
        assert_close_to_oracle(case, "chunked", torch.float64, 1e-9)


@pytest.mark.parametrize("loss", LOSSES)
def test_one_class_and_many_classes(loss, monkeypatch):
    """One class: SupCon has no negatives but still a softmax, Circle counts no row; many classes: mostly
    rows without positives, label runs cut by every strip."""
    _budget(monkeypatch, "200")
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(41, 5, generator=gen, dtype=torch.float64)
    for labels in (torch.zeros(41, dtype=torch.long), torch.randint(0, 30, (41,), generator=gen)):
        for reduction in ("mean", "none"):
            case = make_case(loss, "self", 41, 5, seed=7, reduction=reduction)
            case.q = x
            if loss != "info_nce":
                case.labels = labels
            assert_close_to_oracle(case, "chunked", torch.float64, 1e-9)


@pytest.mark.parametrize("loss", LOSSES)
def test_extreme_scales_and_low_precision(loss, monkeypatch):
    """gamma = 256 and temperature = 0.01 (each piece exponentiated against its own maximum) and the default
    scales (one exponential per entry), in float64 and float32, over many strips."""
    _budget(monkeypatch, "3000")
    for dtype, tol in [(torch.float64, 1e-9), (torch.float32, 1e-4)]:
        for kwargs in ({}, {"temperature": 0.01, "gamma": 256.0}):
            case = make_case(loss, "self", 70, 16, seed=11, layout="many_classes", **kwargs)
            assert_close_to_oracle(case, "chunked", dtype, tol)


@pytest.mark.parametrize("b", [300, 701])
def test_wide_strips_gradients_and_temperature(b, monkeypatch):
    """Strips wider than the row-maximum blocks (256 columns), a learnable temperature, per-row losses."""
    _budget(monkeypatch, str(64 * b * 8))
    for loss in LOSSES:
        case = make_case(loss, "self", b, 8, seed=b, layout="many_classes", reduction="none", weighted=True)
        assert_close_to_oracle(case, "chunked", torch.float64, 1e-9)


def test_matches_the_row_path(monkeypatch):
    """The same values and gradients as the row path (the threshold raised again), fused and per-row."""
    _budget(monkeypatch, "5000")
    gen = torch.Generator().manual_seed(5)
    x0 = torch.randn(90, 12, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 6, (90,), generator=gen)
    calls = {
        "info_nce": lambda x, r: dk.info_nce(x, reduction=r, backend="chunked"),
        "supcon": lambda x, r: dk.supcon_loss(x, y, reduction=r, backend="chunked"),
        "circle": lambda x, r: dk.circle_loss(x, y, reduction=r, backend="chunked"),
    }
    proj = torch.randn(90, generator=gen, dtype=torch.float64)
    for name, call in calls.items():
        for reduction in ("mean", "none"):
            results = []
            for threshold in (0, 10**9):
                monkeypatch.setattr(chunked, "_SELF_SYMMETRY_MIN_ROWS", threshold)
                x = x0.clone().requires_grad_()
                value = call(x, reduction)
                ((value * proj).sum() if reduction == "none" else value).backward()
                results.append((value.detach(), x.grad))
            (v_sym, g_sym), (v_row, g_row) = results
            torch.testing.assert_close(v_sym, v_row, rtol=1e-12, atol=1e-12, msg=name)
            torch.testing.assert_close(g_sym, g_row, rtol=1e-10, atol=1e-13, msg=name)


@pytest.mark.parametrize("chunk_bytes", ["1", "700", None])
def test_argmax_ties_go_to_the_lowest_column(chunk_bytes, monkeypatch):
    """Small integer rows (every score exact, so ties are exact whichever way a pair is multiplied) with many
    duplicates: the best column is the lowest of the tied ones, whether it was found in a row's own strip or
    in an earlier strip read by columns, as the dense reference picks it."""
    _budget(monkeypatch, chunk_bytes)
    gen = torch.Generator().manual_seed(2)
    x = torch.randint(-2, 3, (600, 3), generator=gen).double()
    s = torch.tensor(0.5, dtype=torch.float64)
    got = chunked.softmax_stats(x, x, s, self_mode=True, columns=False)
    want = reference.softmax_stats(x, x, s, self_mode=True, columns=False)
    assert torch.equal(got.argmax, want.argmax)
    torch.testing.assert_close(got.lse, want.lse, rtol=1e-12, atol=1e-12)


def test_single_row_has_no_candidates():
    x = torch.randn(1, 3, dtype=torch.float64)
    stats = chunked.softmax_stats(x, x, torch.tensor(2.0, dtype=torch.float64), self_mode=True, columns=False)
    assert stats.argmax.tolist() == [-1] and stats.lse.tolist() == [float("-inf")]
    labels = torch.zeros(1, dtype=torch.long)
    circle = chunked.circle_stats(x, x, labels, labels, margin=0.4, gamma=80.0, self_mode=True)
    assert circle.argmax.tolist() == [-1] and circle.row_loss.tolist() == [0.0]
