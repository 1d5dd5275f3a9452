"""An independent float64 implementation of the losses, written plainly (per row, dense), for tests."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _normalized(x: Tensor, normalize: bool) -> Tensor:
    x = x.double()
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12) if normalize else x


def _reduce(rows: Tensor, counted: Tensor, weight: Tensor | None, reduction: str) -> Tensor:
    w = torch.ones_like(rows) if weight is None else weight.double()
    rows = torch.where(counted, rows * w, torch.zeros_like(rows))
    if reduction == "none":
        return rows
    if reduction == "sum":
        return rows.sum()
    if not counted.any():
        return rows.sum()  # documented convention: zero loss when no row is counted
    return rows.sum() / (w * counted).sum()


def info_nce(
    q, k=None, positive=None, temperature=0.07, normalize=True, symmetric=False, weight=None, reduction="mean"
):
    qn = _normalized(q, normalize)
    kn = qn if k is None else _normalized(k, normalize)
    logits = qn @ kn.T / (temperature.double() if isinstance(temperature, Tensor) else temperature)
    if k is None:
        logits = logits - torch.diag(torch.full((len(qn),), float("inf"), dtype=torch.float64))
        if positive is None:
            positive = (torch.arange(len(qn)) + len(qn) // 2) % len(qn)
    if positive is None:
        positive = torch.arange(len(qn))
    rows = F.cross_entropy(logits, positive, reduction="none")
    if symmetric:
        rows = 0.5 * (rows + F.cross_entropy(logits.T, positive, reduction="none"))
    return _reduce(rows, torch.ones(len(qn), dtype=torch.bool), weight, reduction)


def supcon(x, labels, k=None, key_labels=None, temperature=0.1, normalize=True, weight=None, reduction="mean"):
    qn = _normalized(x, normalize)
    kn = qn if k is None else _normalized(k, normalize)
    key_labels = labels if k is None else key_labels
    t = temperature.double() if isinstance(temperature, Tensor) else temperature
    rows, counted = [], []
    for i in range(len(qn)):
        cand = torch.ones(len(kn), dtype=torch.bool)
        if k is None:
            cand[i] = False
        pos = cand & (key_labels == labels[i])
        logits = qn[i] @ kn.T / t
        if not pos.any():
            rows.append(logits.sum() * 0)
            counted.append(False)
            continue
        log_prob = logits - torch.logsumexp(logits[cand], dim=0)
        rows.append(-log_prob[pos].mean())
        counted.append(True)
    return _reduce(torch.stack(rows), torch.tensor(counted), weight, reduction)


def circle(x, labels, k=None, key_labels=None, margin=0.4, gamma=80.0, normalize=True, weight=None, reduction="mean"):
    qn = _normalized(x, normalize)
    kn = qn if k is None else _normalized(k, normalize)
    key_labels = labels if k is None else key_labels
    rows, counted = [], []
    for i in range(len(qn)):
        sim = qn[i] @ kn.T
        pos = key_labels == labels[i]
        if k is None:
            pos[i] = False
        neg = key_labels != labels[i]
        if not pos.any() or not neg.any():
            rows.append(sim.sum() * 0)
            counted.append(False)
            continue
        sp, sn = sim[pos], sim[neg]
        ap = torch.clamp_min(-sp.detach() + 1 + margin, 0.0)
        an = torch.clamp_min(sn.detach() + margin, 0.0)
        logit_p = -ap * (sp - (1 - margin)) * gamma
        logit_n = an * (sn - margin) * gamma
        rows.append(F.softplus(torch.logsumexp(logit_n, 0) + torch.logsumexp(logit_p, 0)))
        counted.append(True)
    return _reduce(torch.stack(rows), torch.tensor(counted), weight, reduction)
