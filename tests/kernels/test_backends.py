"""Every loss and mode, on the reference and chunked backends, against the independent float64 oracle."""

import itertools

import pytest
import torch
from cases import LAYOUTS, LOSS_MODES, assert_close_to_oracle, make_case

BACKENDS = ["reference", "chunked"]
SHAPES = list(itertools.product([1, 2, 7, 128, 300], [1, 3, 64, 257]))
REDUCTIONS = ["mean", "sum", "none"]


def _skip_impossible(loss, mode, b):
    if loss == "info_nce" and mode == "self" and b == 1:
        pytest.skip("self-mode InfoNCE needs a second row for the positive (tested as an error)")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("loss,mode", LOSS_MODES)
@pytest.mark.parametrize("b,d", SHAPES)
def test_float64_matches_oracle_at_awkward_shapes(backend, loss, mode, b, d):
    _skip_impossible(loss, mode, b)
    seed = hash((backend, loss, mode, b, d)) % 2**31 + int(torch.randint(0, 2**20, ()))
    i = SHAPES.index((b, d))
    case = make_case(
        loss, mode, b, d, seed=seed, layout=LAYOUTS[i % 3], reduction=REDUCTIONS[i % 3], weighted=bool(i % 2)
    )
    assert_close_to_oracle(case, backend, torch.float64, 1e-7)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("loss,mode", LOSS_MODES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_reduction_weighting_and_label_layout(backend, loss, mode, reduction, weighted, layout):
    case = make_case(
        loss, mode, 24, 10, seed=int(torch.randint(0, 2**31, ())), layout=layout, reduction=reduction, weighted=weighted
    )
    assert_close_to_oracle(case, backend, torch.float64, 1e-7)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("loss,mode", LOSS_MODES)
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.bfloat16, 2e-2), (torch.float16, 2e-2)])
def test_low_precision_inputs_within_design_tolerance(backend, loss, mode, dtype, tol):
    case = make_case(
        loss,
        mode,
        100,
        48,
        seed=int(torch.randint(0, 2**31, ())),
        layout="many_classes",
        prenormalize=dtype != torch.float32,
    )
    assert_close_to_oracle(case, backend, dtype, tol)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("loss,mode", LOSS_MODES)
def test_extreme_scales_stay_finite(backend, loss, mode):
    """gamma = 256 and temperature = 0.01 must not overflow in any dtype. In bf16 the inputs' rounding
    (2^-9 relative) is amplified by gamma = 256 inside the exponent, hence the looser bound there."""
    for dtype, tol in [(torch.float64, 1e-7), (torch.float32, 1e-4), (torch.bfloat16, 1e-1)]:
        case = make_case(loss, mode, 33, 16, seed=int(torch.randint(0, 2**31, ())), temperature=0.01, gamma=256.0)
        assert_close_to_oracle(case, backend, dtype, tol)


@pytest.mark.parametrize("backend", BACKENDS)
def test_chunk_boundaries_do_not_matter(backend, monkeypatch):
    """A tiny memory budget forces one-row chunks: results must not change."""
    monkeypatch.setenv("DCR_CHUNK_BYTES", "1")
    for loss, mode in LOSS_MODES:
        case = make_case(loss, mode, 9, 5, seed=int(torch.randint(0, 2**31, ())), reduction="none")
        assert_close_to_oracle(case, backend, torch.float64, 1e-7)
