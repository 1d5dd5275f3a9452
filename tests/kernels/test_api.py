"""Input validation, metrics, modules, gradcheck and the documented edge cases of the public API."""

import math

import pytest
import torch

import dcr_kernels as dk
from dcr_kernels.backends import resolve

BACKENDS = ["reference", "chunked"]


def _x(b=6, d=4, dtype=torch.float64, **kw):
    return torch.randn(b, d, dtype=dtype, **kw)


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: dk.info_nce(torch.randn(2, 3, 4)), "2-D"),
        (lambda: dk.info_nce(torch.randn(4, 3), torch.randn(4, 5)), "dim"),
        (lambda: dk.info_nce(torch.randn(4, 3), torch.randn(4, 3, dtype=torch.float64)), "dtypes differ"),
        (lambda: dk.info_nce(torch.randint(0, 3, (4, 3))), "float16, bfloat16"),
        (lambda: dk.info_nce(torch.randn(0, 3)), "empty"),
        (lambda: dk.info_nce(torch.tensor([[1.0, float("nan")], [0.0, 1.0]])), "NaN or Inf"),
        (lambda: dk.info_nce(torch.tensor([[1.0, float("inf")], [0.0, 1.0]])), "NaN or Inf"),
        (lambda: dk.info_nce(torch.randn(4, 3), temperature=0.0), "temperature"),
        (lambda: dk.info_nce(torch.randn(4, 3), temperature=-1.0), "temperature"),
        (lambda: dk.info_nce(torch.randn(4, 3), temperature=float("nan")), "temperature"),
        (lambda: dk.info_nce(torch.randn(4, 3), reduction="avg"), "reduction"),
        (lambda: dk.info_nce(torch.randn(4, 3), backend="cuda"), "backend"),
        (lambda: dk.info_nce(torch.randn(5, 3)), "even batch"),
        (lambda: dk.info_nce(torch.randn(1, 3)), "even batch"),
        (lambda: dk.info_nce(torch.randn(4, 3), positive=torch.arange(4)), "own positive"),
        (lambda: dk.info_nce(torch.randn(4, 3), torch.randn(4, 3), positive=torch.tensor([0, 1, 2, 9])), r"\[0, 4\)"),
        (lambda: dk.info_nce(torch.randn(4, 3), torch.randn(3, 3)), "key has 3 rows"),
        (lambda: dk.info_nce(torch.randn(4, 3), torch.randn(5, 3), symmetric=True), "symmetric"),
        (lambda: dk.info_nce(torch.randn(4, 3), symmetric=True), "symmetric"),
        (lambda: dk.info_nce(torch.randn(4, 3), weight=torch.ones(3)), "weight"),
        (lambda: dk.info_nce(torch.randn(4, 3), weight=-torch.ones(4)), "non-negative"),
        (lambda: dk.info_nce(torch.randn(4, 3), weight=torch.zeros(4)), "sum to zero"),
        (lambda: dk.supcon_loss(torch.randn(4, 3), torch.tensor([0.0, 1, 0, 1])), "integers"),
        (lambda: dk.supcon_loss(torch.randn(4, 3), torch.tensor([0, 1, 0])), r"shape \(4,\)"),
        (lambda: dk.supcon_loss(torch.randn(4, 3), torch.tensor([[0, 1, 0, 1]])), r"shape \(4,\)"),
        (lambda: dk.supcon_loss(torch.randn(4, 3), torch.zeros(4, dtype=torch.long), torch.randn(4, 3)), "key_labels"),
        (
            lambda: dk.supcon_loss(torch.randn(4, 3), torch.zeros(4, dtype=torch.long), key_labels=torch.zeros(4)),
            "without key",
        ),
        (lambda: dk.circle_loss(torch.randn(4, 3), torch.tensor([0, 1, 0, 1]), margin=1.5), "margin"),
        (lambda: dk.circle_loss(torch.randn(4, 3), torch.tensor([0, 1, 0, 1]), gamma=0), "gamma"),
        (lambda: dk.circle_loss("x", torch.tensor([0, 1])), "torch.Tensor"),
    ],
)
def test_bad_input_gets_a_clear_error(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()


def test_triton_backend_on_cpu_without_interpreter_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises((ValueError, ImportError), match="CUDA|Triton"):
        resolve("triton", torch.zeros(1), "info_nce")


def test_environment_variable_overrides_auto(monkeypatch):
    monkeypatch.setenv("DCR_BACKEND", "reference")
    assert resolve("auto", torch.zeros(1), "f").__name__.endswith("reference")
    monkeypatch.setenv("DCR_BACKEND", "chunked")
    assert resolve("auto", torch.zeros(1), "f").__name__.endswith("chunked")
    monkeypatch.delenv("DCR_BACKEND")
    assert resolve("auto", torch.zeros(1), "f").__name__.endswith("chunked")


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_row_counted_gives_zero_loss_with_warning_and_a_live_graph(backend):
    x = _x(requires_grad=True)
    singletons = torch.arange(6)
    with pytest.warns(RuntimeWarning, match="no row is counted"):
        out = dk.supcon_loss(x, singletons, backend=backend, return_metrics=True)
    assert out.loss.item() == 0.0 and out.rows_counted == 0 and out.rows_dropped == 6
    assert math.isnan(out.accuracy.item())
    out.loss.backward()
    assert torch.equal(x.grad, torch.zeros_like(x))
    with pytest.warns(RuntimeWarning, match="positive and a negative"):
        loss = dk.circle_loss(x, torch.zeros(6, dtype=torch.long), backend=backend, reduction="none")
    assert loss.shape == (6,) and not loss.any()


@pytest.mark.parametrize("backend", BACKENDS)
def test_metrics_count_rows_and_top1(backend):
    # two tight clusters: every row's nearest other row shares its label
    centers = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 2])  # class 2 is a singleton: dropped
    x = centers[labels.clamp(max=1)] + 0.01 * torch.randn(7, 3, dtype=torch.float64)
    x[6] = torch.tensor([0.0, 0.0, 1.0])
    for loss in (dk.supcon_loss, dk.circle_loss):
        out = loss(x, labels, backend=backend, return_metrics=True)
        assert (out.rows_counted, out.rows_dropped) == (6, 1)
        assert out.accuracy.item() == 1.0
    q = torch.randn(9, 5, dtype=torch.float64)
    out = dk.info_nce(q, q + 1e-3 * torch.randn_like(q), backend=backend, return_metrics=True)
    assert out.accuracy.item() == 1.0 and out.rows_counted == 9
    out = dk.info_nce(
        q, q.flip(0) + 1e-3 * torch.randn_like(q), positive=torch.arange(9), backend=backend, return_metrics=True
    )
    assert out.accuracy.item() == pytest.approx(1 / 9)  # only the middle row finds its positive


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck_tiny_float64(backend):
    torch.manual_seed(0)
    q = _x(4, 3, requires_grad=True)
    k = _x(5, 3, requires_grad=True)
    t = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    y, yk = torch.tensor([0, 1, 0, 1]), torch.tensor([1, 0, 0, 1, 1])
    checks = [
        (lambda q, t: dk.info_nce(q, temperature=t, backend=backend), (q, t)),
        (lambda q, k, t: dk.info_nce(q, k, temperature=t, backend=backend), (q, k, t)),
        (lambda q, k, t: dk.info_nce(q, k[:4], temperature=t, symmetric=True, backend=backend), (q, k, t)),
        (lambda q, t: dk.supcon_loss(q, y, temperature=t, backend=backend, reduction="none"), (q, t)),
        (lambda q, k, t: dk.supcon_loss(q, y, k, yk, temperature=t, backend=backend), (q, k, t)),
    ]  # Circle's detached alpha weights make its gradient differ from finite differences by design
    for fn, inputs in checks:
        assert torch.autograd.gradcheck(fn, inputs)


@pytest.mark.parametrize(
    "loss",
    [
        lambda q, k: dk.info_nce(q, k, backend="chunked"),
        lambda q, k: dk.supcon_loss(q, torch.tensor([0, 1, 0, 1, 2, 2]), backend="chunked"),
        lambda q, k: dk.circle_loss(q, torch.tensor([0, 1, 0, 1, 2, 2]), backend="chunked"),
    ],
)
def test_fused_gradients_survive_a_second_backward_through_a_retained_graph(loss):
    """The fused path hands its forward-time gradients on at the first backward; a second one recomputes."""
    q, k = _x(requires_grad=True), _x(7, 4, requires_grad=True)
    out = loss(q, k)
    first = torch.autograd.grad(out, q, retain_graph=True)[0]
    second = torch.autograd.grad(out, q)[0]
    assert first.abs().sum() > 0
    torch.testing.assert_close(first, second, rtol=0, atol=1e-14)


def test_learnable_temperature_is_clamped_and_trained():
    loss_fn = dk.InfoNCELoss(temperature=0.07, learnable_temperature=True, max_scale=100.0, symmetric=True)
    assert loss_fn.temperature.item() == pytest.approx(0.07)
    q, k = torch.randn(8, 4), torch.randn(8, 4)
    loss_fn(q, k).backward()
    assert loss_fn.temp.log_scale.grad is not None and loss_fn.temp.log_scale.grad != 0
    with torch.no_grad():
        loss_fn.temp.log_scale.fill_(10.0)  # scale e^10 > max_scale: clamped to 1/100
    assert loss_fn.temperature.item() == pytest.approx(0.01)
    fixed = dk.SupConLoss(temperature=0.2)
    assert not list(fixed.parameters()) and fixed.temperature.item() == pytest.approx(0.2)


def test_modules_match_functional():
    x, y = torch.randn(10, 6), torch.randint(0, 3, (10,))
    assert torch.allclose(dk.CircleLoss(margin=0.3, gamma=32)(x, y), dk.circle_loss(x, y, margin=0.3, gamma=32))
    assert torch.allclose(dk.SupConLoss(temperature=0.2)(x, y), dk.supcon_loss(x, y, temperature=0.2))
    assert torch.allclose(dk.InfoNCELoss(temperature=0.2)(x), dk.info_nce(x, temperature=0.2), atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_eval_mode_without_grad_builds_no_graph(backend):
    x = _x(requires_grad=True)
    with torch.no_grad():
        loss = dk.circle_loss(x, torch.tensor([0, 1, 0, 1, 0, 1]), backend=backend)
    assert not loss.requires_grad


def test_loss_dtype_is_fp32_for_half_inputs_and_grads_in_input_dtype():
    x = torch.randn(8, 16, dtype=torch.bfloat16, requires_grad=True)
    loss = dk.supcon_loss(x, torch.randint(0, 2, (8,)), backend="chunked")
    assert loss.dtype == torch.float32
    loss.backward()
    assert x.grad.dtype == torch.bfloat16
