"""The pytorch-metric-learning drop-ins against pml itself: same inputs, same default reduction, same
gradients, with and without reference embeddings, at uneven label counts."""

import pytest
import torch

pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
from pytorch_metric_learning import miners, reducers  # noqa: E402

from dcr_kernels.integrations import pml  # noqa: E402


def _batch(b, d, classes, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(b, d, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, classes, (b,), generator=gen)
    labels[:3] = classes + 7  # a small class; rows of a class seen once have no positive
    labels[-1] = classes + 9
    return x, labels


def _pair(ours, theirs, x, labels, **kw):
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    extra = {k: v.clone().requires_grad_() if k == "ref_emb" else v for k, v in kw.items()}
    extra_b = {k: v.clone().requires_grad_() if k == "ref_emb" else v for k, v in kw.items()}
    a, b = ours(xa, labels, **extra), theirs(xb, labels, **extra_b)
    a.backward()
    b.backward()
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-8, atol=1e-12)
    if "ref_emb" in kw:
        torch.testing.assert_close(extra["ref_emb"].grad, extra_b["ref_emb"].grad, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("m,gamma", [(0.4, 80.0), (0.25, 256.0)])
@pytest.mark.parametrize("seed", [0, 1])
def test_circle_matches_pml(m, gamma, seed):
    x, labels = _batch(37, 19, 5, seed)
    _pair(pml.CircleLoss(m=m, gamma=gamma), pml_losses.CircleLoss(m=m, gamma=gamma), x, labels)
    ref, ref_labels = _batch(23, 19, 5, seed + 10)
    _pair(
        pml.CircleLoss(m=m, gamma=gamma),
        pml_losses.CircleLoss(m=m, gamma=gamma),
        x,
        labels,
        ref_emb=ref,
        ref_labels=ref_labels,
    )


@pytest.mark.parametrize("temperature", [0.07, 0.1, 0.5])
def test_supcon_matches_pml(temperature):
    x, labels = _batch(41, 13, 6, 2)
    _pair(pml.SupConLoss(temperature), pml_losses.SupConLoss(temperature), x, labels)
    ref, ref_labels = _batch(29, 13, 6, 3)
    _pair(
        pml.SupConLoss(temperature), pml_losses.SupConLoss(temperature), x, labels, ref_emb=ref, ref_labels=ref_labels
    )


def test_no_positive_row_gives_pmls_zero_loss():
    x = torch.randn(6, 8, requires_grad=True)
    singletons = torch.arange(6)
    for ours, theirs in ((pml.CircleLoss(), pml_losses.CircleLoss()), (pml.SupConLoss(), pml_losses.SupConLoss())):
        with pytest.warns(RuntimeWarning):
            value = ours(x, singletons)
        assert value.item() == theirs(x, singletons).item() == 0.0
        value.backward()


def test_miners_and_reducers_are_refused_with_a_reason():
    x, labels = torch.randn(8, 4), torch.randint(0, 2, (8,))
    pairs = miners.MultiSimilarityMiner()(x, labels)
    with pytest.raises(ValueError, match="miners"):
        pml.CircleLoss()(x, labels, pairs)
    with pytest.raises(TypeError, match="reducer"):
        pml.SupConLoss(reducer=reducers.MeanReducer())
    with pytest.raises(ValueError, match="ref_labels"):
        pml.CircleLoss()(x, labels, ref_emb=x)
