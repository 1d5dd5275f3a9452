"""The refusal and false-refusal directions at layer l, from the DCR stage's training prompts only.

With mean pooled layer-l states mu_toxic, mu_seemingly and mu_benign (the same truncated forward and pooling
as the DCR stage, `dcr.modeling.prompt_embeddings`):

    r = mu_toxic - mu_benign                        (the refusal direction)
    v = mu_seemingly - mu_benign                    (the false-refusal direction)
    v_perp = v - (v . r_hat) r_hat                  (made orthogonal to r, so removing it spares refusal)

as in single-vector ablation of false refusal (Wang et al. 2024) after the refusal direction of Arditi et
al. (2024). Only the train split of the labelled prompts (`dcr.prompts.sets.split`, the DCR stage's own
split) is read, never a validation or evaluation prompt.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

from torch import Tensor


class Directions(NamedTuple):
    """Unit vectors and their raw norms; counts of prompts per class; cos(v, r) before orthogonalisation."""

    refusal: Tensor
    false_refusal: Tensor
    refusal_norm: float
    false_refusal_norm: float
    cosine_before: float
    counts: dict[str, int]


def class_means(embed: Callable[[list[str]], Tensor], texts: dict[str, Sequence[str]]) -> dict[str, Tensor]:
    """Mean layer-l state of each class's prompts (fp32, one vector per class)."""
    return {name: embed(list(rows)).float().mean(dim=0) for name, rows in texts.items()}


def estimate_directions(means: dict[str, Tensor], counts: dict[str, int]) -> Directions:
    """r and v_perp from the class means (keys toxic, seemingly_toxic, benign)."""
    r = means["toxic"] - means["benign"]
    v = means["seemingly_toxic"] - means["benign"]
    scale = float(means["benign"].norm()) + 1e-12
    if not float(r.norm()) > 1e-6 * scale or not float(v.norm()) > 1e-6 * scale:
        raise ValueError(
            "the class means coincide (harmful or seemingly harmful vs harmless): no direction to estimate at "
            "this layer; check the prompts, the layer and --max-length"
        )
    r_hat = r / r.norm()
    v_perp = v - (v @ r_hat) * r_hat
    if not float(v_perp.norm()) > 1e-6 * float(v.norm()):
        raise ValueError("the false-refusal direction lies along the refusal direction: nothing is left to ablate")
    return Directions(
        refusal=r_hat,
        false_refusal=v_perp / v_perp.norm(),
        refusal_norm=float(r.norm()),
        false_refusal_norm=float(v_perp.norm()),
        cosine_before=float(v @ r_hat / v.norm()),
        counts=dict(counts),
    )
