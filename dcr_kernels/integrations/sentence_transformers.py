"""sentence-transformers losses on the fused kernels, for `SentenceTransformerTrainer` and `model.fit`.

    from dcr_kernels.integrations.sentence_transformers import CachedMultipleNegativesRankingLoss
    loss = CachedMultipleNegativesRankingLoss(model, mini_batch_size=64)   # was: losses.Cached...(model, ...)

The classes subclass the library's own, so the constructor, `get_config_dict`, `citation`, the embedding
of the input columns and (for the cached loss) the gradient caching with its RNG replay are the library's;
only the loss over the embeddings is replaced: it is assembled from row log-sum-exps over each key set
(`dcr_kernels.row_lse`, on the fused kernels), so the anchors x candidates score matrices are never formed.
For the cached loss that means d loss / d embeddings for the whole batch in one pass instead of one
backward per mini-batch of score rows.

Every setting of the library's ranking loss: the four `directions` (query_to_doc, query_to_query,
doc_to_query, doc_to_doc), `partition_mode` joint (one softmax over all directions, the GTE loss) or
per_direction, the three `hardness_mode`s with any `hardness_strength` (alpha * stop_grad(S) added to the
chosen negatives' logits), hard-negative columns, cosine or dot-product similarity, and
`gather_across_devices`, where every rank scores its rows against every rank's through
`dcr_kernels.distributed`'s autograd gather, as the library does. Other similarity functions raise a
ValueError naming the library's class to use instead.

`GISTEmbedLoss` and `CachedGISTEmbedLoss`: the guide's similarities formed chunk by chunk beside the
model's (`dcr_kernels.guided_lse`), both margin strategies, `contrast_anchors` / `contrast_positives`.

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
from ..guided_lse import guided_row_logsumexp
from ..pair_terms import row_dots
from ..row_lse import row_logsumexp

try:
    from sentence_transformers import util as _st_util
    from sentence_transformers.base.losses.merged_forward import embed_columns
    from sentence_transformers.sentence_transformer import losses as _st_losses
    from sentence_transformers.util import batch_to_device
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
    """Refuse what the fused loss does not compute (a similarity other than cosine or dot product)."""
    _normalize_flag(loss.similarity_fct)


def _gathered(x: Tensor) -> tuple[Tensor, int]:
    """Every rank's rows (autograd: each rank's gradient flows back to its owner) and this rank's offset."""
    world = World.of()
    sizes = row_counts(x, world)
    return gather_with_grad(x, sizes, world), offsets(sizes)[world.rank]


def _penalised(lse: Tensor, scale: float, penalty: float) -> Tensor:
    """A log-sum-exp over logits (scale + penalty) S whose penalty is a stop-gradient term (the library's
    hardness weighting, alpha * stop_grad(S)): the value of scale + penalty, the gradient of scale alone."""
    if penalty == 0.0:
        return lse
    keep = scale / (scale + penalty)
    return keep * lse + (1.0 - keep) * lse.detach()


def _hardness(mode: str | None, strength: float, block: int) -> tuple[float, float]:
    """(penalty of the row's own column, penalty of the other columns) in document block `block` (0: the
    positives, then each hard-negative column), as the library's hardness modes place alpha * stop_grad(S)."""
    if mode is None or strength == 0.0:
        return 0.0, 0.0
    own = strength if block > 0 and mode in ("hard_negatives", "all_negatives") else 0.0
    other = strength if mode in ("in_batch_negatives", "all_negatives") else 0.0
    return own, other


def _ranking_loss(loss, embeddings: list[Tensor]) -> Tensor:
    """The library's MultipleNegativesRankingLoss over these embeddings, from row log-sum-exps over each key
    set (`dcr_kernels.row_lse`; never a B x N matrix): every direction, joint or per-direction partition,
    every hardness mode, gathered across devices or not."""
    if len(embeddings) < 2:
        raise ValueError(
            f"Expected at least 2 embeddings (anchors, positives, optional negatives), got {len(embeddings)}"
        )
    if _normalize_flag(loss.similarity_fct):
        embeddings = [torch.nn.functional.normalize(e, dim=-1) for e in embeddings]
    queries, docs = embeddings[0], list(embeddings[1:])
    local_queries, local_docs = queries, docs[0]
    b, offset = queries.shape[0], 0
    if loss.gather_across_devices and torch.distributed.is_available() and torch.distributed.is_initialized():
        queries, offset = _gathered(queries)
        docs = [_gathered(d)[0] for d in docs]
    s, mode, strength = float(loss.scale), loss.hardness_mode, float(loss.hardness_strength)

    def own(rows: Tensor, block: Tensor) -> Tensor:  # S(i, offset + i): row i against its own column
        return row_dots(rows, block[offset : offset + b])

    pieces: dict[str, list[Tensor]] = {"query_to_doc": []}
    for k, block in enumerate(docs):
        own_penalty, other_penalty = _hardness(mode, strength, k)
        if own_penalty == other_penalty:
            lse = row_logsumexp(local_queries, block, s + other_penalty)
            pieces["query_to_doc"].append(_penalised(lse, s, other_penalty))
        else:
            lse = row_logsumexp(local_queries, block, s + other_penalty, exclude_offset=offset)
            own_sim = own(local_queries, block)
            own_logit = s * own_sim + own_penalty * own_sim.detach()
            pieces["query_to_doc"] += [_penalised(lse, s, other_penalty), own_logit]
    if "query_to_query" in loss.directions:
        pieces["query_to_query"] = [row_logsumexp(local_queries, queries, s, exclude_offset=offset)]
    if "doc_to_query" in loss.directions:
        pieces["doc_to_query"] = [row_logsumexp(local_docs, queries, s)]
    if "doc_to_doc" in loss.directions:
        pieces["doc_to_doc"] = [row_logsumexp(local_docs, block, s, exclude_offset=offset) for block in docs]
    if loss.partition_mode == "joint":
        log_z = torch.logsumexp(torch.stack([p for ps in pieces.values() for p in ps]), dim=0)
    else:
        log_z = torch.stack([torch.logsumexp(torch.stack(ps), dim=0) for ps in pieces.values()]).mean(dim=0)
    positive = s * own(local_queries, docs[0])
    return (log_z - positive).mean()


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


def _gist_embeddings(loss, sentence_features) -> tuple[list[Tensor], list[Tensor]]:
    """The model's embeddings of each column and, without gradients, the guide's (re-tokenised when the
    guide's vocabulary or length differs), as the library's GISTEmbedLoss.forward embeds them."""
    sentence_features = list(sentence_features)
    guide_features = [dict(feature) for feature in sentence_features]  # the guide writes into its own copies
    embeddings = embed_columns(loss.model, sentence_features)
    with torch.no_grad():
        if loss.must_retokenize:
            guide_features = []
            for feature in sentence_features:
                input_ids = feature["input_ids"]
                if "cu_seq_lens_q" in feature:  # packed sequences: one row per document again
                    flat, bounds = input_ids[0].tolist(), feature["cu_seq_lens_q"].tolist()
                    input_ids = [flat[start:end] for start, end in zip(bounds[:-1], bounds[1:], strict=True)]
                decoded = loss.tokenizer.batch_decode(input_ids, skip_special_tokens=True)
                guide_features.append(batch_to_device(loss.guide.preprocess(decoded), loss.guide.device))
        guide_embeddings = embed_columns(loss.guide, guide_features)
    return embeddings, guide_embeddings


def _gist_loss(loss, embeddings: list[Tensor], guide_embeddings: list[Tensor]) -> Tensor:
    """The library's GISTEmbed loss over these embeddings: the model's cosine similarities / temperature,
    minus the candidates whose guide similarity to the anchor passes the anchor-positive guide similarity
    less the margin (absolute or relative), over anchor-positive (own positive kept), anchor-anchor and
    positive-positive (optional, self excluded) and anchor-negative pairs; each piece a guided row
    log-sum-exp (`dcr_kernels.guided_lse`), so neither the model's nor the guide's B x N matrix is formed."""
    if len(embeddings) not in (2, 3) or len(guide_embeddings) != len(embeddings):
        raise ValueError(f"Expected 2 or 3 embeddings, got {len(embeddings)}")
    unit = [torch.nn.functional.normalize(e, dim=-1) for e in [*embeddings, *guide_embeddings]]
    anchor, positive, *negative = unit[: len(embeddings)]
    guide_anchor, guide_positive, *guide_negative = unit[len(embeddings) :]
    b, offset = anchor.shape[0], 0
    if loss.gather_across_devices and torch.distributed.is_available() and torch.distributed.is_initialized():
        positive, offset = _gathered(positive)
        guide_positive = _gathered(guide_positive)[0]
        negative, guide_negative = [_gathered(x)[0] for x in negative], [_gathered(x)[0] for x in guide_negative]
    own = slice(offset, offset + b)
    guide_sim = row_dots(guide_anchor, guide_positive[own])
    if loss.margin_strategy == "absolute":
        threshold = guide_sim - loss.margin
    else:
        threshold = guide_sim - guide_sim.abs() * loss.margin
    s = 1.0 / loss.temperature
    pieces = [guided_row_logsumexp(anchor, positive, guide_anchor, guide_positive, s, threshold, protect_offset=offset)]
    if loss.contrast_anchors:
        pieces.append(guided_row_logsumexp(anchor, anchor, guide_anchor, guide_anchor, s, threshold, exclude_offset=0))
    if loss.contrast_positives:
        pieces.append(
            guided_row_logsumexp(
                positive[own], positive, guide_positive[own], guide_positive, s, threshold, exclude_offset=offset
            )
        )
    for neg, guide_neg in zip(negative, guide_negative, strict=True):
        pieces.append(guided_row_logsumexp(anchor, neg, guide_anchor, guide_neg, s, threshold))
    log_z = torch.logsumexp(torch.stack(pieces), dim=0)
    return (log_z - s * row_dots(anchor, positive[own])).mean()


class GISTEmbedLoss(_st_losses.GISTEmbedLoss):
    """The library's GISTEmbedLoss (a guide model masks likely false negatives), fused: the model's and the
    guide's similarities are formed tile by tile, never as B x N matrices."""

    def forward(self, sentence_features, labels: Tensor | None = None) -> Tensor:
        return _gist_loss(self, *_gist_embeddings(self, sentence_features))


class CachedGISTEmbedLoss(_st_losses.CachedGISTEmbedLoss):
    """The library's cached GISTEmbedLoss (gradient caching; the guide's embeddings are computed once, in
    the no-gradient pass), with the loss over the whole batch from the guided row log-sum-exps."""

    def calculate_loss(
        self, reps: list[list[Tensor]], reps_guided: list[list[Tensor]], *, with_backward: bool = False
    ) -> Tensor:
        if len(reps) != len(reps_guided):
            raise ValueError("reps and reps_guided must have the same length")
        value = _gist_loss(self, [torch.cat(r) for r in reps], [torch.cat(r) for r in reps_guided])
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
