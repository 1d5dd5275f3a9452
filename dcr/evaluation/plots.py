"""A 2-D picture of layer-l representations: PCA (via SVD) of the pooled states, one colour per class.

matplotlib is optional: without it `projection_plot` returns None and the evaluation skips the figure.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch


def pca_2d(embeddings: torch.Tensor) -> tuple[torch.Tensor, list[float]]:
    """Coordinates (N, 2) on the first two principal components and the variance fraction each explains."""
    x = embeddings.detach().double().cpu()
    x = x - x.mean(0)
    _, s, v = torch.linalg.svd(x, full_matrices=False)
    var = s.square()
    coords = x @ v[:2].T
    if coords.shape[1] < 2:
        coords = torch.cat([coords, torch.zeros(len(x), 2 - coords.shape[1], dtype=x.dtype)], 1)
    explained = (var[:2] / var.sum().clamp(min=1e-30)).tolist()
    return coords.float(), explained + [0.0] * (2 - len(explained))


def projection_plot(
    embeddings: torch.Tensor, labels: Sequence[str], path: str | Path, *, title: str = ""
) -> Path | None:
    """Scatter the PCA projection to a PNG at ``path``; None when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    coords, explained = pca_2d(embeddings)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(5.5, 4.5), dpi=120)
    for name in dict.fromkeys(labels):
        rows = [i for i, lab in enumerate(labels) if lab == name]
        ax.scatter(coords[rows, 0], coords[rows, 1], s=12, alpha=0.7, label=f"{name} ({len(rows)})")
    ax.set_xlabel(f"PC1 ({explained[0]:.0%} of variance)")
    ax.set_ylabel(f"PC2 ({explained[1]:.0%} of variance)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
