"""How well pooled representations separate classes: cross-class cosine, nearest-neighbour label accuracy and
the cross-validated AUROC of a linear probe. Pure torch on (N, D) embeddings with integer labels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def cross_class_cosine(embeddings: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean cosine similarity over all pairs of rows with different labels, in O(N D) memory.

    With unit rows u and class sums S_c, the sum over ordered cross-class pairs is |sum S_c|^2 - sum |S_c|^2.
    """
    u = F.normalize(embeddings.detach().double(), dim=-1)
    classes, codes = labels.unique(return_inverse=True)
    sums = torch.zeros(len(classes), u.shape[1], dtype=u.dtype, device=u.device).index_add(0, codes, u)
    counts = torch.bincount(codes, minlength=len(classes)).double()
    pairs = counts.sum() ** 2 - (counts**2).sum()
    if pairs == 0:
        return float("nan")
    return float((sums.sum(0).square().sum() - sums.square().sum()) / pairs)


def nearest_neighbour_hits(embeddings: torch.Tensor, labels: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """Per row: whether its most cosine-similar other row has the same label (leave-one-out 1-NN)."""
    u = F.normalize(embeddings.detach().float(), dim=-1)
    hits = []
    for start in range(0, len(u), chunk):
        sim = u[start : start + chunk] @ u.T
        rows = torch.arange(start, start + len(sim), device=u.device)
        sim[torch.arange(len(sim), device=u.device), rows] = float("-inf")
        hits.append(labels[sim.argmax(1)] == labels[rows])
    return torch.cat(hits)


def nearest_neighbour_accuracy(embeddings: torch.Tensor, labels: torch.Tensor, chunk: int = 1024) -> float:
    """Fraction of rows whose most cosine-similar other row has the same label (leave-one-out 1-NN)."""
    return nearest_neighbour_hits(embeddings, labels, chunk).double().mean().item()


def auroc(scores: torch.Tensor, positive: torch.Tensor) -> float:
    """Area under the ROC curve: P(score of a positive > score of a negative), ties counted half."""
    scores, positive = scores.double().flatten(), positive.bool().flatten()
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUROC needs both positive and negative rows")
    order = scores.argsort()
    ranks = torch.empty_like(scores)
    ranks[order] = torch.arange(1, len(scores) + 1, dtype=scores.dtype)
    uniq, inverse = scores.unique(return_inverse=True)
    mean_rank = torch.zeros(len(uniq), dtype=scores.dtype).index_add(0, inverse, ranks)
    mean_rank /= torch.bincount(inverse, minlength=len(uniq)).double()
    rank_sum = mean_rank[inverse][positive].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def fit_logistic(
    x: torch.Tensor, y: torch.Tensor, l2: float = 1e-2, iters: int = 200
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights and bias of an L2-regularised logistic regression of 0/1 targets ``y`` on ``x`` (L-BFGS)."""
    w = torch.zeros(x.shape[1], dtype=x.dtype, requires_grad=True)
    b = torch.zeros((), dtype=x.dtype, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=iters, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(x @ w + b, y) + 0.5 * l2 * w.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach()


def probe_auroc(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    *,
    folds: int = 5,
    l2: float = 1e-2,
    iters: int = 200,
    seed: int = 0,
) -> float:
    """Cross-validated AUROC of an L2-regularised logistic-regression probe on two classes.

    Folds are stratified; features are standardised with the training fold's statistics; the AUROC is
    computed once over all out-of-fold scores. The larger label is the positive class.
    """
    classes = labels.unique()
    if len(classes) != 2:
        raise ValueError(f"the linear probe needs exactly two classes, got {classes.tolist()}")
    x = embeddings.detach().double().cpu()
    y = (labels.cpu() == classes[1].cpu()).double()
    gen = torch.Generator().manual_seed(seed)
    fold_of = torch.empty(len(y), dtype=torch.long)
    for cls in (0.0, 1.0):
        rows = (y == cls).nonzero().flatten()
        if len(rows) < folds:
            raise ValueError(f"each class needs at least {folds} rows for {folds}-fold cross-validation")
        rows = rows[torch.randperm(len(rows), generator=gen)]
        fold_of[rows] = torch.arange(len(rows)) % folds
    scores = torch.empty(len(y), dtype=torch.float64)
    for k in range(folds):
        test = fold_of == k
        mean, std = x[~test].mean(0), x[~test].std(0).clamp(min=1e-8)
        w, b = fit_logistic((x[~test] - mean) / std, y[~test], l2, iters)
        scores[test] = ((x[test] - mean) / std) @ w + b
    return auroc(scores, y.bool())


def separation_report(embeddings: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Cross-class cosine, 1-NN label accuracy and, for two classes of at least two rows, the linear probe's
    AUROC (up to 5 folds)."""
    report = {
        "cross_class_cosine": cross_class_cosine(embeddings, labels),
        "nn_accuracy": nearest_neighbour_accuracy(embeddings, labels),
    }
    _, counts = labels.unique(return_counts=True)
    if len(counts) == 2 and int(counts.min()) >= 2:
        report["probe_auroc"] = probe_auroc(embeddings, labels, folds=min(5, int(counts.min())))
    return report
