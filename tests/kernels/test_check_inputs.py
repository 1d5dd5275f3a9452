"""`check_inputs=False`: the same losses and gradients without the checks that read values, and no operation
that synchronises with a GPU (read from the ATen calls a call makes, so it is checked on CPU); the checks
themselves can be switched off but shapes, dtypes and devices are still refused."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import dcr_kernels as dk
import dcr_kernels.distributed as dd

# ATen calls that copy a value to the host (a GPU synchronisation) or whose output shape depends on values
SYNCING = {"_local_scalar_dense", "is_nonzero", "equal", "nonzero", "unique", "_unique", "_unique2", "unique_dim"}


class NoHostReads(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket.__name__ in SYNCING:
            raise AssertionError(f"{func} reads values on the host")
        return func(*args, **(kwargs or {}))


def _calls(x, labels, w, t, check_inputs, return_metrics=False):
    kw = dict(backend="triton", check_inputs=check_inputs, return_metrics=return_metrics)
    n = x.shape[0] // 2
    return [
        dk.circle_loss(x, labels, weight=w, **kw),
        dk.circle_loss(x[:n], labels[:n], x[n:], labels[n:], reduction="sum", **kw),
        dk.supcon_loss(x, labels, temperature=t, **kw),
        dk.info_nce(x, temperature=t, weight=w, **kw),
        dk.info_nce(x[:n], x[n:], symmetric=True, **kw),
        dk.info_nce(x[:n], x, positive=torch.arange(n) + n, reduction="none", **kw),
        dk.sigmoid_loss(x[:n], x[n:], scale=1 / t, bias=-t, weight=w[:n], backend="triton", check_inputs=check_inputs),
    ]


def _inputs(seed: int):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(36, 20, generator=gen).requires_grad_()
    labels = torch.randint(0, 5, (36,), generator=gen) * 7 - 3  # arbitrary integer labels
    return x, labels, torch.rand(36, generator=gen), torch.tensor(0.2, requires_grad=True)


def _grads(outs, x, t):
    total = sum((o.loss if isinstance(o, tuple) else o).sum() for o in outs)
    return torch.autograd.grad(total, [x, t])


@pytest.mark.parametrize("return_metrics", [False, True])
def test_unchecked_calls_equal_checked_ones(return_metrics):
    x, labels, w, t = _inputs(int(torch.randint(0, 2**31, ())))
    checked = _calls(x, labels, w, t, True, return_metrics)
    unchecked = _calls(x, labels, w, t, False, return_metrics)
    for a, b in zip(checked, unchecked, strict=True):
        if isinstance(a, tuple):
            torch.testing.assert_close(a.loss, b.loss)
            torch.testing.assert_close(a.accuracy, b.accuracy, equal_nan=True)
            assert isinstance(b.rows_counted, torch.Tensor) and int(b.rows_counted) == a.rows_counted
            assert int(b.rows_dropped) == a.rows_dropped
        else:
            torch.testing.assert_close(a, b)
    for g, h in zip(_grads(checked, x, t), _grads(unchecked, x, t), strict=True):
        torch.testing.assert_close(g, h)


def test_unchecked_calls_never_read_values_on_the_host():
    x, labels, w, t = _inputs(0)
    with NoHostReads():
        outs = _calls(x, labels, w, t, False, return_metrics=True)
        _grads(outs, x, t)
    with pytest.raises(AssertionError, match="reads values"), NoHostReads():
        _calls(x, labels, w, t, True)  # the checks do read them


def test_nothing_counted_gives_a_zero_loss_without_the_check():
    x = torch.randn(6, 4, requires_grad=True)
    singletons = torch.arange(6)
    for fn in (dk.supcon_loss, dk.circle_loss):
        loss = fn(x, singletons, backend="chunked", check_inputs=False)
        assert float(loss.detach()) == 0.0
        (g,) = torch.autograd.grad(loss, x)
        assert torch.equal(g, torch.zeros_like(g))


def test_structure_is_still_checked():
    x = torch.randn(6, 4)
    with pytest.raises(ValueError, match="2-D"):
        dk.info_nce(x[None], check_inputs=False)
    with pytest.raises(TypeError, match="dtypes differ"):
        dk.info_nce(x, x.double(), check_inputs=False)
    with pytest.raises(ValueError, match="shape \\(6,\\)"):
        dk.circle_loss(x, torch.arange(5), check_inputs=False)
    with pytest.raises(ValueError, match="check_inputs=False is for the single-process losses"):
        dd.CircleLoss(check_inputs=False)
