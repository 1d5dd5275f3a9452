"""The losses inside torch.compile'd code and under autocast.

torch.compile breaks the graph at the data-dependent input checks (NaN, label counts) and runs the
backend's autograd Functions eagerly; compiled code must give the eager results."""

import pytest
import torch

import dcr_kernels as dk

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BACKEND = "triton" if DEVICE == "cuda" else "chunked"


def _step(lin, x, y):
    e = lin(x)
    return (
        dk.circle_loss(e, y, backend=BACKEND)
        + dk.supcon_loss(e, y, backend=BACKEND)
        + dk.info_nce(e[:20], e[20:], symmetric=True, backend=BACKEND)
        + dk.info_nce(e, reduction="none", backend=BACKEND).mean()
    )


@pytest.mark.parametrize("compiler", ["aot_eager"] + (["inductor"] if DEVICE == "cuda" else []))
def test_compiled_step_matches_eager(compiler):
    torch.manual_seed(0)
    lin = torch.nn.Linear(16, 8).to(DEVICE)
    x, y = torch.randn(40, 16, device=DEVICE), torch.randint(0, 3, (40,), device=DEVICE)
    ref = _step(lin, x, y)
    ref_grad = torch.autograd.grad(ref, lin.weight)[0]
    torch._dynamo.reset()
    compiled = torch.compile(lambda x, y: _step(lin, x, y), backend=compiler)
    for _ in range(2):  # the second call reuses the compiled graphs
        out = compiled(x, y)
        grad = torch.autograd.grad(out, lin.weight)[0]
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(grad, ref_grad, rtol=1e-4, atol=1e-5)


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
