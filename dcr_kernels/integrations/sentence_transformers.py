"""sentence-transformers losses on the fused kernels, for `SentenceTransformerTrainer` and `model.fit`.

    from dcr_kernels.integrations.sentence_transformers import CachedMultipleNegativesRankingLoss
    loss = CachedMultipleNegativesRankingLoss(model, mini_batch_size=64)   # was: losses.Cached...(model, ...)

The classes subclass the library's own, so the constructor, `get_config_dict`, `citation`, the embedding
of the input columns and (for the cached loss) the gradient caching with its RNG replay are the library's;
only the loss over the embeddings is replaced by the fused InfoNCE, which never forms the
anchors x candidates score matrix. For the cached loss that means d loss / d embeddings for the whole
batch in one fused pass instead of one backward per mini-batch of score rows.

Supported: `directions=("query_to_doc",)` (the default; hard negatives as extra candidate columns) and
`("query_to_doc", "doc_to_query")` with `partition_mode="per_direction"` (the symmetric loss); cosine or
dot-product similarity; `gather_across_devices`, where every rank scores its anchors against every rank's
candidates through `dcr_kernels.distributed`'s autograd gather, as the library does. Anything else
(`query_to_query`, `doc_to_doc`, a joint softmax over several directions, hardness weighting, other
similarity functions) raises a ValueError naming the library's class to use instead.

`SupConLoss` and `CircleLoss` take one text column and a label per row (`forward(sentence_features,
labels)`), for training on labelled sentences.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .. import functional as F
from ..distributed.comm import gather_with_grad, offsets, row_counts
from ..distributed.world import World

try:
    from sentence_transformers import util as _st_util
    from sentence_transformers.sentence_transformer import losses as _st_losses
except ImportError as err:  # pragma: no cover - exercised only without the optional dependency
    raise ImportError(
        "dcr_kernels.integrations.sentence_transformers needs sentence-transformers: pip install sentence-transformers"
    ) from err


def _normalize_flag(similarity_fct) -> bool:
    if similarity_fct is _st_util.cos_sim:
        return True
    if similarity_fct is _st_util.dot_score:
        return False
    raise ValueError(
        f"similarity_fct={getattr(similarity_fct, '__name__', similarity_fct)!r} is not supported by the fused "
        "loss: use sentence_transformers.util.cos_sim or dot_score"
    )


def _check(loss) -> None:
    """Refuse the settings the fused loss does not compute, with the way out."""
    directions = tuple(loss.directions)
    if directions not in (("query_to_doc",), ("query_to_doc", "doc_to_query")):
        raise ValueError(
            f"directions={directions} are not supported by the fused loss (query_to_doc, optionally with "
            "doc_to_query); use sentence_transformers.losses.MultipleNegativesRankingLoss for the others"
        )
    if len(directions) > 1 and loss.partition_mode != "per_direction":
        raise ValueError(
            "several directions need partition_mode='per_direction' with the fused loss (one softmax per "
            "direction); a joint softmax over both is the library's MultipleNegativesRankingLoss"
        )
    if loss.hardness_mode is not None and loss.hardness_strength > 0:
        raise ValueError("hardness weighting is not supported by the fused loss; set hardness_strength=0")
    _normalize_flag(loss.similarity_fct)


def _gathered(x: Tensor) -> tuple[Tensor, int]:
    """Every rank's rows (autograd: each rank's gradient flows back to its owner) and this rank's offset."""
    world = World.of()
    sizes = row_counts(x, world)
    return gather_with_grad(x, sizes, world), offsets(sizes)[world.rank]


def _ranking_loss(loss, embeddings: list[Tensor]) -> Tensor:
    """The library's MultipleNegativesRankingLoss value over these embeddings, on the fused InfoNCE."""
    if len(embeddings) < 2:
        raise ValueError(
            f"Expected at least 2 embeddings (anchors, positives, optional negatives), got {len(embeddings)}"
        )
    queries, docs = embeddings[0], list(embeddings[1:])
    b = queries.shape[0]
    offset = 0
    if loss.gather_across_devices and torch.distributed.is_available() and torch.distributed.is_initialized():
        local_queries, local_docs = queries, docs[0]
        queries, offset = _gathered(queries)
        docs = [_gathered(d)[0] for d in docs]
    else:
        local_queries, local_docs = queries, docs[0]
    positive = torch.arange(offset, offset + b, device=queries.device)
    kw = dict(temperature=1.0 / loss.scale, normalize=_normalize_flag(loss.similarity_fct))
    value = F.info_nce(local_queries, torch.cat(docs), positive=positive, **kw)
    if "doc_to_query" in loss.directions:
        value = 0.5 * (value + F.info_nce(local_docs, queries, positive=positive, **kw))
    return value


class MultipleNegativesRankingLoss(_st_losses.MultipleNegativesRankingLoss):
    """The library's MultipleNegativesRankingLoss (InfoNCE over in-batch and hard negatives), fused."""

    def __init__(self, model, *args: Any, **kwargs: Any) -> None:
        super().__init__(model, *args, **kwargs)
        _check(self)

    def compute_loss_from_embeddings(self, embeddings: list[Tensor], labels: Tensor | None = None) -> Tensor:
        return _ranking_loss(self, embeddings)


class MultipleNegativesSymmetricRankingLoss(MultipleNegativesRankingLoss):
    """The symmetric form: anchors find their positive among the candidates and positives their anchor among
    the anchors, one softmax per direction, averaged (the library's directions=("query_to_doc",
    "doc_to_query"), partition_mode="per_direction")."""

    def __init__(self, model, scale: float = 20.0, similarity_fct=_st_util.cos_sim, gather_across_devices=False):
        super().__init__(
            model, scale=scale, similarity_fct=similarity_fct, gather_across_devices=gather_across_devices,
            directions=("query_to_doc", "doc_to_query"), partition_mode="per_direction",
        )  # fmt: skip


class CachedMultipleNegativesRankingLoss(_st_losses.CachedMultipleNegativesRankingLoss):
    """The library's cached (GradCache) ranking loss: mini-batches embedded without gradients, the loss and
    d loss / d embeddings of the whole batch from one fused pass, then each mini-batch re-embedded with
    gradients (RNG replayed) and the cached gradients pushed through it."""

    def __init__(self, model, *args: Any, **kwargs: Any) -> None:
        super().__init__(model, *args, **kwargs)
        _check(self.loss)

    def calculate_loss(self, reps: list[list[Tensor]], labels: Tensor | None = None, *, with_backward: bool = False):
        value = _ranking_loss(self.loss, [torch.cat(r) for r in reps])
        if with_backward:
            value.backward()
            value = value.detach()
        return value


class _LabelledLoss(nn.Module):
    """A loss over one embedded text column and a class label per row."""

    def __init__(self, model) -> None:
        super().__init__()
        self.model = model

    def embed(self, sentence_features) -> Tensor:
        features = list(sentence_features)
        if len(features) != 1:
            raise ValueError(f"{type(self).__name__} takes one text column and a label column, got {len(features)}")
        return self.model(features[0])["sentence_embedding"]


class SupConLoss(_LabelledLoss):
    """Supervised contrastive loss (L_out) over labelled sentences: same-label rows are positives."""

    def __init__(self, model, temperature: float = 0.1) -> None:
        super().__init__(model)
        self.temperature = temperature

    def forward(self, sentence_features, labels: Tensor) -> Tensor:
        return F.supcon_loss(self.embed(sentence_features), labels, temperature=self.temperature)

    def get_config_dict(self) -> dict[str, Any]:
        return {"temperature": self.temperature}

    @property
    def citation(self) -> str:
        return """
@inproceedings{khosla2020supervised,
    title={Supervised Contrastive Learning},
    author={Prannay Khosla and Piotr Teterwak and Chen Wang and Aaron Sarna and Yonglong Tian and others},
    booktitle={Advances in Neural Information Processing Systems},
    year={2020}
}
"""


class CircleLoss(_LabelledLoss):
    """Circle loss over labelled sentences (cosine similarities, alpha detached)."""

    def __init__(self, model, margin: float = 0.4, gamma: float = 80.0) -> None:
        super().__init__(model)
        self.margin, self.gamma = margin, gamma

    def forward(self, sentence_features, labels: Tensor) -> Tensor:
        return F.circle_loss(self.embed(sentence_features), labels, margin=self.margin, gamma=self.gamma)

    def get_config_dict(self) -> dict[str, Any]:
        return {"margin": self.margin, "gamma": self.gamma}

    @property
    def citation(self) -> str:
        return """
@inproceedings{sun2020circle,
    title={Circle Loss: A Unified Perspective of Pair Similarity Optimization},
    author={Yifan Sun and Changmao Cheng and Yuhang Zhang and Chi Zhang and Liang Zheng and others},
    booktitle={CVPR},
    year={2020}
}
"""
