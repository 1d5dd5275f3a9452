"""The losses inside torch.compile'd code and under autocast.

Under torch.compile every loss is one custom operator (`dcr_kernels.custom_ops`), so `fullgraph=True`
traces whole training steps; compiled code gives the eager results, values and gradients, in float64 to
1e-10 on fresh random inputs, for every loss (SigLIP's sigmoid loss included), mode, reduction, metrics, weights
and a learnable temperature (scale and bias)."""

import math

import pytest
import torch

import dcr_kernels as dk

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BACKENDS = ["triton"] if DEVICE == "cuda" else ["chunked", "triton"]  # triton on CPU: the interpreter
COMPILERS = ["aot_eager", "inductor"]
BACKEND = "triton" if DEVICE == "cuda" else "chunked"


def _losses(e, y, t, w, backend, reduction, metrics):
    kw = dict(backend=backend, reduction=reduction, return_metrics=metrics)
    n = e.shape[0] // 2
    outs = [
        dk.circle_loss(e, y, weight=w, **kw),
        dk.circle_loss(e[:n], y[:n], e[n:], y[n:], **kw),
        dk.supcon_loss(e, y, temperature=t, weight=w, **kw),
        dk.supcon_loss(e[:n], y[:n], e, y, temperature=0.2, **kw),
        dk.info_nce(e, temperature=t, **kw),
        dk.info_nce(e[:n], e[n:], temperature=t, weight=w[:n], **kw),
    ]
    if reduction != "none":
        outs.append(dk.info_nce(e[:n], e[n:], symmetric=True, temperature=t, **kw))
    losses = [o.loss if metrics else o for o in outs]
    sig = dict(backend=backend, reduction=reduction)
    losses += [dk.sigmoid_loss(e[:n], e[n:], scale=1 / t, bias=-t, weight=w[:n], **sig), dk.sigmoid_loss(e, e, **sig)]
    total = sum(loss.sum() for loss in losses)
    return total, ([(o.accuracy, o.rows_counted) for o in outs] if metrics else [])


@pytest.mark.parametrize("compiler", COMPILERS)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_fullgraph_compile_equals_eager(compiler, backend, reduction):
    gen = torch.Generator().manual_seed(int(torch.randint(0, 2**31, ())))
    dtype = torch.float64 if backend == "chunked" else torch.float32
    lin = torch.nn.Linear(12, 10, dtype=dtype).to(DEVICE)
    x = torch.randn(30, 12, generator=gen, dtype=dtype).to(DEVICE)
    y = torch.randint(0, 4, (30,), generator=gen).to(DEVICE)
    w = torch.rand(30, generator=gen, dtype=dtype).to(DEVICE)
    t = torch.tensor(0.3, dtype=dtype, device=DEVICE, requires_grad=True)
    metrics = reduction != "sum"

    def step(x, y):
        return _losses(lin(x), y, t, w, backend, reduction, metrics)

    params = [lin.weight, lin.bias, t]
    ref, ref_metrics = step(x, y)
    ref_grads = torch.autograd.grad(ref, params)
    torch._dynamo.reset()
    compiled = torch.compile(step, fullgraph=True, backend=compiler)
    tol = dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-5)
    for _ in range(2):  # the second call reuses the compiled graph
        out, out_metrics = compiled(x, y)
        grads = torch.autograd.grad(out, params)
        torch.testing.assert_close(out, ref, **tol)
        for g, h in zip(grads, ref_grads, strict=True):
            torch.testing.assert_close(g, h, **tol)
        for (acc, counted), (ref_acc, ref_counted) in zip(out_metrics, ref_metrics, strict=True):
            assert int(counted) == ref_counted
            assert math.isclose(float(acc), float(ref_acc), rel_tol=1e-6) or math.isnan(float(ref_acc))


def test_compiled_checks_still_give_clear_errors():
    """The checks run inside the operator: a NaN is refused under compile as in eager mode."""
    torch._dynamo.reset()
    compiled = torch.compile(lambda e, y: dk.circle_loss(e, y), fullgraph=True, backend="aot_eager")
    e = torch.randn(8, 4, device=DEVICE)
    e[3, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf"):
        compiled(e, torch.arange(8, device=DEVICE) % 2)


def test_compiled_without_gradients():
    torch._dynamo.reset()
    compiled = torch.compile(lambda e, y: dk.supcon_loss(e, y), fullgraph=True, backend="aot_eager")
    e, y = torch.randn(10, 4, device=DEVICE), torch.arange(10, device=DEVICE) % 3
    with torch.no_grad():
        torch.testing.assert_close(compiled(e, y), dk.supcon_loss(e, y))


def test_autocast_does_not_recast_the_backend():
    """Under autocast the loss equals the loss of the autocast model outputs computed outside it."""
    torch.manual_seed(1)
    lin = torch.nn.Linear(16, 8).to(DEVICE)
    x, y = torch.randn(40, 16, device=DEVICE), torch.randint(0, 3, (40,), device=DEVICE)
    with torch.autocast(DEVICE, dtype=torch.bfloat16):
        e = lin(x)
        inside = dk.circle_loss(e, y, backend=BACKEND) + dk.info_nce(e[:20], e[20:], backend=BACKEND)
    assert e.dtype == torch.bfloat16 and inside.dtype == torch.float32
    outside = dk.circle_loss(e, y, backend=BACKEND) + dk.info_nce(e[:20], e[20:], backend=BACKEND)
    torch.testing.assert_close(inside, outside)
    g_in = torch.autograd.grad(inside, lin.weight, retain_graph=True)[0]
    g_out = torch.autograd.grad(outside, lin.weight)[0]
    torch.testing.assert_close(g_in, g_out)


def test_compiled_corner_cases_give_eager_gradients():
    """A learnable weight whose rows are all dropped (its gradient is zero, not missing) and gradients that
    are views of one another (no row counted, unnormalised): compiled and eager agree."""
    torch._dynamo.reset()
    q = torch.randn(4, 3, dtype=torch.float64, device=DEVICE, requires_grad=True)
    w = torch.rand(4, dtype=torch.float64, device=DEVICE, requires_grad=True)
    singletons = torch.arange(4, device=DEVICE)
    run = lambda q, w: dk.supcon_loss(q, singletons, weight=w, backend="reference")  # noqa: E731
    compiled = torch.compile(run, fullgraph=True, backend="aot_eager")
    with pytest.warns(RuntimeWarning, match="no row is counted"):
        grads = torch.autograd.grad(compiled(q, w), [q, w])
    assert all(torch.equal(g, torch.zeros_like(g)) for g in grads)
    k = torch.randn(4, 3, device=DEVICE, requires_grad=True)
    x = q.detach().float().requires_grad_()
    labels, key_labels = torch.tensor([0, 0, 1, 1], device=DEVICE), torch.tensor([2, 2, 3, 3], device=DEVICE)
    run = lambda x, k: dk.supcon_loss(x, labels, k, key_labels, normalize=False)  # noqa: E731
    torch._dynamo.reset()
    with pytest.warns(RuntimeWarning, match="no row is counted"):
        got = torch.autograd.grad(torch.compile(run, fullgraph=True, backend="aot_eager")(x, k), [x, k])
        want = torch.autograd.grad(run(x, k), [x, k])
    for g, h in zip(got, want, strict=True):
        torch.testing.assert_close(g, h)
