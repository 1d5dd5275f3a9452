"""The agreement of one call across ranks: every rank checks its own inputs, then all compare one row each
(sizes, dims, dtype, options, parameters, norms) so that a mismatch or a bad input on any rank raises the
same error on every rank instead of a hang (`world.agree`), and the call's layout (each rank's rows and
offsets, the bound on |S| over the global batch) is known to all."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from .. import _validation as v
from ..backends import blocks, resolve
from .comm import offsets
from .world import World, agree, require_same

STRATEGIES = ("gather", "ring")
REDUCTIONS = ("mean", "sum")
LOSSES = ("distributed.info_nce", "distributed.supcon_loss", "distributed.circle_loss", "distributed.sigmoid_loss")
_FIELDS = (
    "m",
    "n",
    "dim",
    "dtype",
    "loss",
    "strategy",
    "self_mode",
    "symmetric",
    "reduction",
    "weighted",
    "normalize",
    "positive",
    "positive_min",
    "positive_max",
    "temperature, margin or scale",
    "gamma or bias",
    "query_norm",
    "key_norm",
)
_SHARED = tuple(f for f in _FIELDS if f not in ("m", "n", "positive_min", "positive_max", "query_norm", "key_norm"))
_NAMES = {"dtype": v.FLOAT_DTYPES, "loss": LOSSES, "strategy": STRATEGIES, "reduction": REDUCTIONS}
_FLAGS = ("self_mode", "symmetric", "weighted", "normalize", "positive")


def _show(name: str, value: float) -> str:
    if name in _NAMES:
        return str(_NAMES[name][int(value)])
    if name in _FLAGS:
        return str(bool(value))
    return repr(int(value)) if value.is_integer() else repr(value)


class Call:
    """The agreed layout of one call: the world, every rank's query and key row counts, this rank's offsets,
    and the bound on |S| over the global batch (the largest query and key row norms of all ranks)."""

    def __init__(self, fn: str, group: dist.ProcessGroup | None, check) -> None:
        self.world = World.of(group)
        self.table = agree(self.world, fn, _FIELDS, check)
        require_same(self.table, _SHARED, fn, _show)
        self.q_sizes = [int(row["m"]) for row in self.table]
        self.k_sizes = [int(row["n"]) for row in self.table]
        self.q_start = offsets(self.q_sizes)[self.world.rank]
        self.k_start = offsets(self.k_sizes)[self.world.rank]

    def check_range(self, dtype: torch.dtype, fn: str, **params: float | Tensor) -> None:
        """`check_similarity_bound` over the global batch: |S| is bounded by the largest query and key row
        norms of all ranks; every rank raises the same error, naming the ranks that hold those rows."""
        query_norms = [row["query_norm"] for row in self.table]
        key_norms = [row["key_norm"] for row in self.table]
        try:
            v.check_similarity_bound(max(query_norms) * max(key_norms), dtype, fn, **params)
        except ValueError as err:
            q_rank, k_rank = query_norms.index(max(query_norms)), key_norms.index(max(key_norms))
            raise ValueError(
                f"{err} (the largest query rows are on rank {q_rank}, key rows on rank {k_rank})"
            ) from None


def describe(
    fn: str,
    query: Tensor,
    key: Tensor | None,
    *,
    weight: Tensor | None,
    reduction: str,
    strategy: str,
    backend: str,
    normalize: bool,
    params: tuple[float, float],
    symmetric: bool = False,
    positive: Tensor | None = None,
) -> dict[str, float]:
    """This rank's checks, and its row of the table every rank compares."""
    v.check_embeddings("query" if key is not None else "embeddings", query, fn)
    if key is not None:
        v.check_embeddings("key", key, fn)
        v.check_pair(query, key, fn)
    v.check_weight(weight, query.shape[0], query, fn)
    if reduction not in REDUCTIONS:
        raise ValueError(
            f"{fn}: reduction must be one of {REDUCTIONS}, got {reduction!r}; per-row losses ('none') have no "
            "single gradient convention across ranks: weight the rows and use 'sum' instead"
        )
    if strategy not in STRATEGIES:
        raise ValueError(f"{fn}: strategy must be one of {STRATEGIES}, got {strategy!r}")
    if backend not in blocks.BACKENDS:
        raise ValueError(f"{fn}: backend must be one of {blocks.BACKENDS}, got {backend!r}")
    if backend == "triton":
        resolve(backend, query, fn)  # CUDA, or the interpreter
    if positive is not None:
        v.check_index("positive", positive, query.shape[0], query, fn, "global key row indices")
    pos = positive if positive is not None and positive.numel() > 0 else torch.zeros(1)
    query_norm = v.largest_row_norm(query) if not normalize else 1.0
    key_norm = query_norm if key is None or normalize else v.largest_row_norm(key)
    return dict(
        m=query.shape[0],
        n=(query if key is None else key).shape[0],
        dim=query.shape[1],
        dtype=v.FLOAT_DTYPES.index(query.dtype),
        loss=LOSSES.index(fn),
        strategy=STRATEGIES.index(strategy),
        self_mode=key is None,
        symmetric=symmetric,
        reduction=REDUCTIONS.index(reduction),
        weighted=weight is not None,
        normalize=normalize,
        positive=positive is not None,
        positive_min=int(pos.min()),
        positive_max=int(pos.max()),
        **{"temperature, margin or scale": params[0], "gamma or bias": params[1]},
        query_norm=query_norm,
        key_norm=key_norm,
    )


def agreed(fn: str, group, query: Tensor, key: Tensor | None, params, extra, **options) -> Call:
    """The call's layout, agreed by every rank after each ran `_describe` and its loss's own `extra` checks
    (`params`: a function giving the loss's two parameters, which may raise too)."""

    def check() -> dict[str, float]:
        meta = describe(fn, query, key, params=params(), **options)
        extra(meta)
        return meta

    return Call(fn, group, check)
