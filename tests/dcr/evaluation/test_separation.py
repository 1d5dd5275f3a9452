"""Separation metrics against direct dense computations and known cases."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dcr.evaluation.separation import (
    auroc,
    cross_class_cosine,
    nearest_neighbour_accuracy,
    probe_auroc,
    separation_report,
)


def test_auroc_counts_ties_half_and_orders():
    assert auroc(torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([0, 0, 1, 1])) == 0.75
    assert auroc(torch.tensor([1.0, 1.0, 1.0]), torch.tensor([0, 1, 1])) == 0.5
    assert auroc(torch.tensor([3.0, 2.0, 1.0]), torch.tensor([1, 0, 0])) == 1.0
    with pytest.raises(ValueError):
        auroc(torch.tensor([1.0]), torch.tensor([1]))


def test_cross_class_cosine_and_nn_accuracy_match_dense():
    torch.manual_seed(0)
    x, y = torch.randn(60, 7), torch.randint(0, 3, (60,))
    u = F.normalize(x.double(), dim=-1)
    sim = u @ u.T
    assert cross_class_cosine(x, y) == pytest.approx(float(sim[y[:, None] != y[None]].mean()), abs=1e-12)
    sim.fill_diagonal_(-2)
    expected = float((y[sim.argmax(1)] == y).double().mean())
    assert nearest_neighbour_accuracy(x, y, chunk=7) == pytest.approx(expected)


def test_probe_separates_separable_and_not_noise():
    torch.manual_seed(0)
    y = torch.arange(80) % 2
    x = torch.randn(80, 16)
    assert 0.2 < probe_auroc(x, y) < 0.8, "noise: no better than chance"
    x[:, 0] += 4.0 * y
    assert probe_auroc(x, y) > 0.95
    report = separation_report(x, y)
    assert set(report) == {"cross_class_cosine", "nn_accuracy", "probe_auroc"}
    with pytest.raises(ValueError, match="exactly two classes"):
        probe_auroc(x, torch.arange(80) % 3)
