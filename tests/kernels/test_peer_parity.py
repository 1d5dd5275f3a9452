"""Parity with the implementations users know: pytorch-metric-learning and an eager CLIP / MNRL loss."""

import pytest
import torch
import torch.nn.functional as F

import dcr_kernels as dk

pml = pytest.importorskip("pytorch_metric_learning")
from pytorch_metric_learning import losses, reducers  # noqa: E402

BACKENDS = ["reference", "chunked"]


def _batch(b=40, d=24, classes=5, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(b, d, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, classes, (b,), generator=gen)
    labels[-1] = classes + 3  # one singleton: dropped by both
    return x, labels


def _pml_rows(loss, x, labels):
    return loss(x, labels)["loss"]["losses"].reshape(-1)


@pytest.mark.parametrize("backend", BACKENDS)
def test_supcon_matches_pml_per_row_and_with_its_default_reducer(backend):
    x, labels = _batch()
    for t in (0.07, 0.1, 0.5):
        rows = dk.supcon_loss(x, labels, temperature=t, reduction="none", backend=backend)
        pml_rows = _pml_rows(losses.SupConLoss(temperature=t, reducer=reducers.DoNothingReducer()), x, labels)
        torch.testing.assert_close(rows, pml_rows, rtol=1e-10, atol=1e-10)
        # PML's AvgNonZeroReducer averages rows with loss > 0; every counted row is > 0 here, so it
        # equals our mean over counted rows.
        mean = dk.supcon_loss(x, labels, temperature=t, backend=backend)
        torch.testing.assert_close(mean, losses.SupConLoss(temperature=t)(x, labels), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("backend", BACKENDS)
def test_circle_matches_pml_per_row_and_gradients(backend):
    x, labels = _batch(seed=1)
    for m, gamma in ((0.4, 80.0), (0.25, 256.0)):
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        rows = dk.circle_loss(xa, labels, margin=m, gamma=gamma, reduction="none", backend=backend)
        pml_rows = _pml_rows(losses.CircleLoss(m=m, gamma=gamma, reducer=reducers.DoNothingReducer()), xb, labels)
        torch.testing.assert_close(rows, pml_rows, rtol=1e-10, atol=1e-10)
        w = torch.rand(len(x), dtype=torch.float64)
        (rows * w).sum().backward()
        (pml_rows * w).sum().backward()
        torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-8, atol=1e-10)
        mean = dk.circle_loss(x, labels, margin=m, gamma=gamma, backend=backend)
        torch.testing.assert_close(mean, losses.CircleLoss(m=m, gamma=gamma)(x, labels), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("backend", BACKENDS)
def test_info_nce_matches_eager_clip_and_mnrl(backend):
    gen = torch.Generator().manual_seed(2)
    img = torch.randn(33, 16, generator=gen, dtype=torch.float64, requires_grad=True)
    txt = torch.randn(33, 16, generator=gen, dtype=torch.float64, requires_grad=True)
    logit_scale = torch.tensor(2.659, dtype=torch.float64, requires_grad=True)  # CLIP's init, log(1/0.07)

    def clip_eager(a, b, scale):
        logits = scale.exp() * F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T
        target = torch.arange(len(a))
        return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))

    ref = clip_eager(img, txt, logit_scale)
    ref_grads = torch.autograd.grad(ref, [img, txt, logit_scale])
    ours = dk.info_nce(img, txt, temperature=1 / logit_scale.exp(), symmetric=True, backend=backend)
    grads = torch.autograd.grad(ours, [img, txt, logit_scale])
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10)
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-8, atol=1e-10)

    # MultipleNegativesRankingLoss: anchors vs (positives + hard negatives), scale 20, one direction
    anchors, candidates = img[:20], txt
    mnrl = F.cross_entropy(20.0 * F.normalize(anchors, dim=-1) @ F.normalize(candidates, dim=-1).T, torch.arange(20))
    torch.testing.assert_close(dk.info_nce(anchors, candidates, temperature=1 / 20.0, backend=backend), mnrl)
