"""The Triton kernels against the float64 oracle: on a GPU when there is one, else in the interpreter
(TRITON_INTERPRET=1, set by conftest.py before the kernels are imported)."""

import itertools
import os

import pytest
import torch
from cases import LOSS_MODES, assert_close_to_oracle, make_case

triton = pytest.importorskip("triton")
from dcr_kernels.backends.triton import launch  # noqa: E402

ON_GPU = torch.cuda.is_available()
DEVICE = "cuda" if ON_GPU else "cpu"
if not ON_GPU and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("no GPU and the Triton interpreter is off", allow_module_level=True)

FP32_TOL = 1e-4 if not ON_GPU else 5e-3  # the interpreter's fp32 dots are exact; the GPU's default to tf32
LOW_TOL = 2e-2
SHAPES = list(itertools.product([1, 17, 64, 200], [16, 48, 130]))
LAYOUTS = ("two_classes", "many_classes", "singletons")
REDUCTIONS = ("mean", "sum", "none")


def _seed() -> int:
    return int(torch.randint(0, 2**31, ()))


def _skip_impossible(loss, mode, b):
    if loss == "info_nce" and mode == "self" and b == 1:
        pytest.skip("self-mode InfoNCE needs a second row for the positive")


@pytest.mark.parametrize("loss,mode", LOSS_MODES)
@pytest.mark.parametrize("b,d", SHAPES)
def test_fp32_matches_oracle(loss, mode, b, d):
    _skip_impossible(loss, mode, b)
    i = SHAPES.index((b, d))
    case = make_case(
        loss, mode, b, d, seed=_seed(), layout=LAYOUTS[i % 3], reduction=REDUCTIONS[i % 3], weighted=bool(i % 2)
    )
    assert_close_to_oracle(case, "triton", torch.float32, FP32_TOL, DEVICE)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("loss,mode", LOSS_MODES)
@pytest.mark.parametrize("b,d", [(17, 48), (200, 130)])
def test_half_precision_matches_oracle(dtype, loss, mode, b, d):
    case = make_case(loss, mode, b, d, seed=_seed(), layout="many_classes", reduction="none", prenormalize=True)
    assert_close_to_oracle(case, "triton", dtype, LOW_TOL, DEVICE)


@pytest.mark.parametrize("loss,mode", LOSS_MODES)
def test_extreme_scales_stay_finite(loss, mode):
    """gamma = 256 and temperature = 0.01: every exp is taken after subtracting the running max."""
    for dtype, tol in [(torch.float32, FP32_TOL), (torch.float16, 1e-1), (torch.bfloat16, 1e-1)]:
        case = make_case(loss, mode, 40, 32, seed=_seed(), temperature=0.01, gamma=256.0)
        assert_close_to_oracle(case, "triton", dtype, tol, DEVICE)


def _poison(monkeypatch):
    def poisoned(shape, dtype, device):
        fill = float("nan") if dtype.is_floating_point else -7
        return torch.full(shape, fill, dtype=dtype, device=device)

    monkeypatch.setattr(launch, "new_output", poisoned)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("loss,mode", LOSS_MODES)
@pytest.mark.parametrize("d", [130, 600, 1100, 2100])
def test_any_dimension_matches_oracle(dtype, loss, mode, d, monkeypatch):
    """D spanning many BLOCK_K slices and not a multiple of 8 or 16 (padded to 64 for the kernels); outputs
    poisoned; the backward's workspace set to 16 rows, so that the cross mode with extra keys (72 columns)
    runs in row blocks; 36 columns take two column splits in the interpreter."""
    _poison(monkeypatch)
    n = 36
    elem = 4 if dtype == torch.float32 else 2
    monkeypatch.setenv("DCR_TRITON_WORKSPACE_MB", str(16 * 2 * n * elem / 2**20))  # (extra keys: 2n cols)
    i = [130, 600, 1100, 2100].index(d)
    case = make_case(
        loss,
        mode,
        n,
        d,
        seed=_seed(),
        layout=LAYOUTS[i % 3],
        reduction=REDUCTIONS[i % 3],
        prenormalize=dtype != torch.float32,
    )
    assert_close_to_oracle(case, "triton", dtype, FP32_TOL if dtype == torch.float32 else LOW_TOL, DEVICE)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("loss,mode", LOSS_MODES)
def test_backward_in_blocks_matches_oracle(dtype, loss, mode, monkeypatch):
    """The workspace set to 128 x 160 elements: the backward runs in 128 x 128 blocks of W with ragged
    edges (300 rows and columns: 128 + 128 + 44; 600 extra-key columns), accumulating dA over column
    blocks and dB over row blocks; outputs poisoned."""
    _poison(monkeypatch)
    elem = 4 if dtype == torch.float32 else 2
    monkeypatch.setenv("DCR_TRITON_WORKSPACE_MB", str(128 * 160 * elem / 2**20))
    case = make_case(loss, mode, 300, 48, seed=_seed(), layout="many_classes", prenormalize=dtype != torch.float32)
    assert_close_to_oracle(case, "triton", dtype, FP32_TOL if dtype == torch.float32 else LOW_TOL, DEVICE)


def test_workspace_and_splits_follow_the_shapes(monkeypatch):
    monkeypatch.setenv("DCR_TRITON_WORKSPACE_MB", "1")
    assert launch.workspace_shape(100, 2000, 4) == (100, 2000)  # 0.8 MB: one block
    assert launch.workspace_shape(10_000, 400, 4) == (640, 400)  # every column, as many rows as fit
    assert launch.workspace_shape(10, 40_000, 4) == (10, 26_112)  # every row, as many columns as fit
    assert launch.workspace_shape(10_000, 4096, 4) == (512, 512)  # square blocks of 1 MiB / 4 bytes
    assert launch.workspace_shape(10_000, 10**7, 2) == (640, 640)  # edges are multiples of 128
    assert launch.workspace_shape(10**6, 10**7, 2**20) == (128, 128)  # never below 128 x 128
    if launch.interpreting():
        assert [launch.column_splits(40, n, torch.device("cpu")) for n in (1, 33, 65, 10_000)] == [1, 2, 3, 3]


def test_poisoned_outputs_are_fully_written(monkeypatch):
    """Every kernel output starts as NaN (or a bogus index) and must be overwritten completely."""
    _poison(monkeypatch)
    for loss, mode in LOSS_MODES:
        for b, d in [(1, 16), (33, 20)]:
            if loss == "info_nce" and mode == "self" and b == 1:
                continue
            case = make_case(loss, mode, b, d, seed=_seed(), reduction="none")
            assert_close_to_oracle(case, "triton", torch.float32, FP32_TOL, DEVICE)


def test_argmax_metrics_agree_with_chunked():
    import dcr_kernels as dk

    x = torch.randn(50, 24, device=DEVICE)
    y = torch.randint(0, 4, (50,), device=DEVICE)
    for fn in (dk.supcon_loss, dk.circle_loss):
        a = fn(x, y, backend="triton", return_metrics=True)
        c = fn(x.cpu(), y.cpu(), backend="chunked", return_metrics=True)
        assert (a.rows_counted, a.rows_dropped) == (c.rows_counted, c.rows_dropped)
        assert a.accuracy.item() == pytest.approx(c.accuracy.item())


@pytest.mark.parametrize("loss", ["info_nce", "clip", "supcon", "circle"])
def test_key_that_is_the_query_tensor_is_still_cross_mode(loss):
    """key=x passes the same tensor object twice: cross mode all the same (every pair, both gradients)."""
    import torch.nn.functional as F

    import dcr_kernels as dk

    gen = torch.Generator().manual_seed(_seed())
    x0 = F.normalize(torch.randn(24, 20, generator=gen, dtype=torch.float64), dim=1)
    y = torch.randint(0, 3, (24,), generator=gen)
    calls = {
        "info_nce": lambda x, b: dk.info_nce(x, x, normalize=False, backend=b),
        "clip": lambda x, b: dk.info_nce(
            x, x, normalize=False, symmetric=True, temperature=torch.tensor(0.1), backend=b
        ),
        "supcon": lambda x, b: dk.supcon_loss(x, y, x, y, normalize=False, backend=b),
        "circle": lambda x, b: dk.circle_loss(x, y, x, y, normalize=False, backend=b),
    }
    grads = {}
    for backend, dtype in (("reference", torch.float64), ("triton", torch.float32)):
        x = x0.to(dtype).clone().requires_grad_()
        value = calls[loss](x, backend)
        value.backward()
        grads[backend] = (value.double(), x.grad.double())
    torch.testing.assert_close(grads["triton"][0], grads["reference"][0], rtol=FP32_TOL, atol=FP32_TOL)
    want = grads["reference"][1]
    assert float((grads["triton"][1] - want).norm() / want.norm()) < FP32_TOL * 10
