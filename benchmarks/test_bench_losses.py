"""pytest-benchmark suites: forward and forward+backward of each loss for each provider.

Benchmarks are named test_<mode>[<loss>-<provider>-B<batch>-D<dim>] and grouped by loss, mode and
size, so `--benchmark-group-by=group` compares the providers of one configuration side by side.
Sizes come from DCR_BENCH_SIZES and DCR_BENCH_DIMS (comma-separated); the device from DCR_BENCH_DEVICE
(default: CUDA when available, with bfloat16; float32 on CPU). Providers that cannot run here skip.

    python -m pytest benchmarks/test_bench_losses.py --benchmark-group-by=group
    DCR_BENCH_SIZES=64 DCR_BENCH_DIMS=16 python -m pytest benchmarks/test_bench_losses.py --benchmark-disable
"""

import itertools
import os

import providers
import pytest
import torch

DEVICE = torch.device(os.environ.get("DCR_BENCH_DEVICE", "cuda" if torch.cuda.is_available() else "cpu"))
DTYPE = torch.bfloat16 if DEVICE.type == "cuda" else torch.float32
SIZES = [int(x) for x in os.environ.get("DCR_BENCH_SIZES", "1024,4096").split(",")]
DIMS = [int(x) for x in os.environ.get("DCR_BENCH_DIMS", "256").split(",")]
CASES = [
    pytest.param(loss, provider, b, d, id=f"{loss}-{provider}-B{b}-D{d}")
    for loss, provider, b, d in itertools.product(providers.LOSSES, providers.PROVIDERS, SIZES, DIMS)
    if providers.supports(provider, loss)
]


def _setup(loss, provider, batch, dim, mode, benchmark):
    try:
        step = providers.step(loss, provider, DEVICE)
    except providers.Unavailable as e:
        pytest.skip(str(e))
    benchmark.group = f"{loss} {mode} B={batch} D={dim} {DEVICE.type} {str(DTYPE).removeprefix('torch.')}"
    benchmark.extra_info.update(loss=loss, provider=provider, batch=batch, dim=dim, mode=mode)
    return step, providers.make_batch(loss, batch, dim, DTYPE, DEVICE)


def _synchronized(fn):
    def run(*args):
        out = fn(*args)
        if DEVICE.type == "cuda":
            torch.cuda.synchronize(DEVICE)
        return out

    return run


@pytest.mark.parametrize("loss,provider,batch,dim", CASES)
def test_fwd(benchmark, loss, provider, batch, dim):
    step, b = _setup(loss, provider, batch, dim, "fwd", benchmark)
    loss_value = benchmark(_synchronized(step.forward), b)
    assert torch.isfinite(loss_value)


@pytest.mark.parametrize("loss,provider,batch,dim", CASES)
def test_fwd_bwd(benchmark, loss, provider, batch, dim):
    step, b = _setup(loss, provider, batch, dim, "fwd_bwd", benchmark)

    def fresh_grads():
        for x in b.inputs():
            x.grad = None
        return (b,), {}

    loss_value = benchmark.pedantic(_synchronized(step.forward_backward), setup=fresh_grads, rounds=5, warmup_rounds=1)
    assert torch.isfinite(loss_value)
    assert all(x.grad is not None and torch.isfinite(x.grad).all() for x in b.inputs())
