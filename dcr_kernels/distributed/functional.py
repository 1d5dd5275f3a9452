"""InfoNCE, SupCon, Circle and the sigmoid loss over the global batch of all ranks (see the package docstring
for the gradient convention): validate on every rank, bring the keys to the rows (gather or ring), reduce."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from .. import _validation as v
from ..backends.base import CIRCLE, SIGMOID, SOFTMAX, compute_dtype
from ..functional import ContrastiveOutput, _as_scalar, _check_labels, _no_rows_counted, _scale
from ..pair_terms import row_dots
from .agreement import LOSSES, Call, agreed
from .comm import OneBlock, Ring, gather_rows, gather_with_grad, offsets, row_counts
from .rows import BlockRows, RowSpec
from .world import World, agree


def _temperature_value(temperature: float | Tensor) -> float:
    return float(temperature.detach()) if isinstance(temperature, Tensor) else float(temperature)


def _normalized(query: Tensor, key: Tensor | None, normalize: bool) -> tuple[Tensor, Tensor]:
    q = F.normalize(query, dim=-1) if normalize else query
    if key is None:
        return q, q
    return q, (F.normalize(key, dim=-1) if normalize else key)


def _rows_against(
    world: World, strategy: str, a: Tensor, b: Tensor, b_sizes: list[int], self_mode: bool, scale: Tensor, spec: RowSpec
) -> tuple[Tensor, Tensor, Tensor]:
    """(value, t, best column) of the local rows `a` against the keys of every rank (rank r holds b_sizes[r])."""
    if strategy == "gather":
        keys = gather_with_grad(b, b_sizes, world)
        source = OneBlock(offsets(b_sizes)[world.rank] if self_mode else None)
    else:
        keys, source = b, Ring(world, b_sizes, 0 if self_mode else None)
    with torch.autocast(a.device.type, enabled=False):
        return BlockRows.apply(a, keys, scale, spec, source)


def _global_codes(call: Call, labels: Tensor, key_labels: Tensor | None) -> tuple[Tensor, Tensor]:
    """Class codes of every query and every key of the global batch, identical on every rank."""
    world = call.world
    all_labels = gather_rows(labels.long(), call.q_sizes, world)
    if key_labels is None:
        _, codes = torch.unique(all_labels, return_inverse=True)
        return codes, codes
    all_keys = gather_rows(key_labels.long(), call.k_sizes, world)
    _, codes = torch.unique(torch.cat([all_labels, all_keys]), return_inverse=True)
    return codes[: all_labels.shape[0]], codes[all_labels.shape[0] :]


def _reduce(
    call: Call,
    rows: Tensor,
    counted: Tensor,
    hits: Tensor,
    weight: Tensor | None,
    reduction: str,
    fn: str,
    return_metrics: bool,
) -> Tensor | ContrastiveOutput:
    """world_size * (this rank's share of the global loss), carrying the global loss as its value."""
    world = call.world
    dtype = rows.dtype
    w = counted.to(dtype) if weight is None else weight.to(dtype) * counted
    local = (w * torch.where(counted, rows, 0.0)).sum()
    parts = (local.detach(), w.sum(), counted.sum(), (hits & counted).sum(), torch.tensor(rows.shape[0]))
    sums = torch.stack([x.to(device=rows.device, dtype=torch.float64) for x in parts])
    if world.size > 1:
        dist.all_reduce(sums, group=world.group)
    total, weight_sum, n_counted, n_hits, n_rows = sums.tolist()
    denom = 1.0
    if reduction == "mean":
        if weight is not None and weight_sum == 0.0:
            raise ValueError(f"{fn}: the weights of the counted rows sum to zero, so their weighted mean is undefined")
        denom = weight_sum
    share = world.size * local / denom
    loss = share + (total / denom - share).detach()
    if not return_metrics:
        return loss
    accuracy = torch.tensor(n_hits / n_counted if n_counted else float("nan"), device=rows.device)
    return ContrastiveOutput(loss, accuracy, int(n_counted), int(n_rows - n_counted))


def _nothing_counted(
    call: Call, fn: str, why: str, reduction: str, inputs: list[Tensor], return_metrics: bool
) -> Tensor | ContrastiveOutput:
    loss = _no_rows_counted(fn, why, reduction, inputs, inputs[0].shape[0])
    if not return_metrics:
        return loss
    nan = torch.tensor(float("nan"), device=loss.device)
    return ContrastiveOutput(loss, nan, 0, sum(call.q_sizes))


def _global_positive(call: Call, positive: Tensor | None, self_mode: bool, fn: str, device) -> Tensor:
    """Each local query's positive as a global key index: the default (cross mode: local key i; self mode:
    local row (i + B/2) mod B), or the given one, whose range every rank has seen in the table."""
    m, n_keys = call.q_sizes[call.world.rank], sum(call.k_sizes)
    rows = torch.arange(m, device=device)
    if positive is None:
        return call.k_start + ((rows + m // 2) % m if self_mode else rows)
    for r, row in enumerate(call.table):
        if row["positive_min"] < 0 or row["positive_max"] >= n_keys:
            raise ValueError(f"{fn}: rank {r} has positive indices outside [0, {n_keys}) (the global key rows)")
    if self_mode:
        agree(call.world, fn, (), lambda: _no_self_positive(positive, call.q_start, fn))
    return positive.long()


def _default_positive_exists(meta: dict[str, float], fn: str) -> None:
    if meta["n"] < meta["m"]:
        raise ValueError(
            f"{fn}: key has {int(meta['n'])} rows but query has {int(meta['m'])}; the default positive of query i "
            "is key i"
        )


def info_nce(
    query: Tensor,
    key: Tensor | None = None,
    *,
    positive: Tensor | None = None,
    temperature: float | Tensor = 0.07,
    normalize: bool = True,
    symmetric: bool = False,
    weight: Tensor | None = None,
    reduction: str = "mean",
    strategy: str = "gather",
    group: dist.ProcessGroup | None = None,
    backend: str = "auto",
    return_metrics: bool = False,
) -> Tensor | ContrastiveOutput:
    """InfoNCE over the global batch: every rank's queries against every rank's keys.

    `positive` holds global key indices (the keys of all ranks concatenated in rank order), so a positive
    may live on any rank. Defaults: cross mode, the positive of local query i is local key i; self mode
    (`key=None`), each rank's batch is two stacked views [x_1..x_n, x'_1..x'_n] and local row i's positive
    is local row (i + n) mod 2n. `symmetric=True` (cross mode, as many keys as queries on every rank) averages
    the row and column losses, as CLIP does. Other arguments as in `functional.info_nce`; `strategy`:
    "gather" or "ring"; `group`: the process group (default: all ranks)."""
    fn = LOSSES[0]

    def extra(meta: dict[str, float]) -> None:
        v.check_temperature(temperature, fn)
        m, n = int(meta["m"]), int(meta["n"])
        if symmetric and (key is None or n != m or positive is not None):
            raise ValueError(
                f"{fn}: symmetric=True needs key with as many rows as query on every rank (got {m} and "
                f"{'none' if key is None else n}) and the default positives"
            )
        if positive is None and key is None and m % 2:
            raise ValueError(
                f"{fn}: in self mode the default positive of local row i is row (i + B/2) mod B (two stacked "
                f"views per rank), which needs an even local batch; got B={m}. Pass positive= or key="
            )
        if positive is None and key is not None:
            _default_positive_exists(meta, fn)

    options = dict(weight=weight, reduction=reduction, strategy=strategy, backend=backend, normalize=normalize)
    params = lambda: (_temperature_value(temperature), 0.0)  # noqa: E731
    call = agreed(fn, group, query, key, params, extra, symmetric=symmetric, positive=positive, **options)
    call.check_range(query.dtype, fn, temperature=temperature)
    self_mode = key is None
    positive = _global_positive(call, positive, self_mode, fn, query.device)
    q, k = _normalized(query, key, normalize)
    dtype = compute_dtype(q.dtype)
    s = _scale(temperature, dtype, q.device)
    every_key = torch.arange(sum(call.k_sizes), device=q.device)
    spec = RowSpec(SOFTMAX, positive, every_key, targets=True, backend=backend)
    value, t, best = _rows_against(call.world, strategy, q, k, call.k_sizes, self_mode, s, spec)
    rows = value - s * row_dots(q.to(dtype), t)
    if symmetric:
        own = call.k_start + torch.arange(k.shape[0], device=q.device)
        every_query = torch.arange(sum(call.q_sizes), device=q.device)
        spec = RowSpec(SOFTMAX, own, every_query, targets=True, backend=backend)
        col_value, col_t, _ = _rows_against(call.world, strategy, k, q, call.q_sizes, False, s, spec)
        rows = 0.5 * (rows + col_value - s * row_dots(k.to(dtype), col_t))
    counted = torch.ones(q.shape[0], dtype=torch.bool, device=q.device)
    return _reduce(call, rows, counted, best == positive, weight, reduction, fn, return_metrics)


def _no_self_positive(positive: Tensor, start: int, fn: str) -> dict[str, float]:
    if bool((positive == start + torch.arange(positive.shape[0], device=positive.device)).any()):
        raise ValueError(f"{fn}: in self mode a row cannot be its own positive (positive[i] == global row index)")
    return {}


def _label_hits(best: Tensor, q_codes: Tensor, key_codes: Tensor) -> Tensor:
    return (key_codes[best.clamp(min=0)] == q_codes) & (best >= 0)


def _labelled(
    fn: str, group, embeddings: Tensor, labels: Tensor, key: Tensor | None, key_labels: Tensor | None,
    params, extra, **options,
) -> tuple[Call, Tensor, Tensor, Tensor]:  # fmt: skip
    """The agreed call of a labelled loss and the class codes of the global batch, the same on every rank:
    (call, every query's code, every key's code, every query's count of other keys of its class)."""

    def checks(meta: dict[str, float]) -> None:
        extra()
        _check_labels(labels, key_labels, embeddings, embeddings if key is None else key, key is None, fn)

    call = agreed(fn, group, embeddings, key, params, checks, **options)
    all_codes, key_codes = _global_codes(call, labels, key_labels)
    others = torch.bincount(key_codes, minlength=int(all_codes.max()) + 1)[all_codes] - int(key is None)
    return call, all_codes, key_codes, others


def _local(call: Call, x: Tensor) -> Tensor:
    """This rank's rows of a vector over the global batch's queries."""
    return x[call.q_start : call.q_start + call.q_sizes[call.world.rank]]


def supcon_loss(
    embeddings: Tensor,
    labels: Tensor,
    key: Tensor | None = None,
    key_labels: Tensor | None = None,
    *,
    temperature: float | Tensor = 0.1,
    normalize: bool = True,
    weight: Tensor | None = None,
    reduction: str = "mean",
    strategy: str = "gather",
    group: dist.ProcessGroup | None = None,
    backend: str = "auto",
    return_metrics: bool = False,
) -> Tensor | ContrastiveOutput:
    """Supervised contrastive loss (L_out) over the global batch: positives are the keys of every rank with
    the row's label. Arguments as in `functional.supcon_loss`, plus `strategy` and `group` (see `info_nce`)."""
    fn = LOSSES[1]
    options = dict(weight=weight, reduction=reduction, strategy=strategy, backend=backend, normalize=normalize)
    params = lambda: (_temperature_value(temperature), 0.0)  # noqa: E731
    call, codes, key_codes, n_pos = _labelled(
        fn, group, embeddings, labels, key, key_labels, params, lambda: v.check_temperature(temperature, fn), **options
    )
    call.check_range(embeddings.dtype, fn, temperature=temperature)
    q, k = _normalized(embeddings, key, normalize)
    if not bool((n_pos > 0).any()):
        why = "every class occurs once, so no row has a positive"
        return _nothing_counted(call, fn, why, reduction, [q, k], return_metrics)
    dtype = compute_dtype(q.dtype)
    s = _scale(temperature, dtype, q.device)
    q_codes, n_pos = _local(call, codes), _local(call, n_pos)
    spec = RowSpec(SOFTMAX, q_codes, key_codes, targets=True, backend=backend)
    value, t, best = _rows_against(call.world, strategy, q, k, call.k_sizes, key is None, s, spec)
    rows = value - s * row_dots(q.to(dtype), t) / n_pos.clamp(min=1)
    return _reduce(call, rows, n_pos > 0, _label_hits(best, q_codes, key_codes), weight, reduction, fn, return_metrics)


def _circle_params(margin: float, gamma: float, fn: str) -> tuple[float, float]:
    v.check_circle_params(margin, gamma, fn)
    return float(margin), float(gamma)


def circle_loss(
    embeddings: Tensor,
    labels: Tensor,
    key: Tensor | None = None,
    key_labels: Tensor | None = None,
    *,
    margin: float = 0.4,
    gamma: float = 80.0,
    normalize: bool = True,
    weight: Tensor | None = None,
    reduction: str = "mean",
    strategy: str = "gather",
    group: dist.ProcessGroup | None = None,
    backend: str = "auto",
    return_metrics: bool = False,
) -> Tensor | ContrastiveOutput:
    """Circle loss over the global batch: positives and negatives are the keys of every rank with the row's
    label and with another label. Arguments as in `functional.circle_loss`, plus `strategy` and `group`."""
    fn = LOSSES[2]
    options = dict(weight=weight, reduction=reduction, strategy=strategy, backend=backend, normalize=normalize)
    call, codes, key_codes, n_pos = _labelled(
        fn, group, embeddings, labels, key, key_labels, lambda: _circle_params(margin, gamma, fn),
        lambda: None, **options,
    )  # fmt: skip
    call.check_range(embeddings.dtype, fn, gamma=gamma)
    counted = (n_pos > 0) & (key_codes.shape[0] - n_pos - int(key is None) > 0)
    q, k = _normalized(embeddings, key, normalize)
    if not bool(counted.any()):
        why = "no row has both a positive and a negative (a single class, or singletons only)"
        return _nothing_counted(call, fn, why, reduction, [q, k], return_metrics)
    q_codes = _local(call, codes)
    one = torch.ones((), dtype=compute_dtype(q.dtype), device=q.device)
    spec = RowSpec(CIRCLE, q_codes, key_codes, targets=False, margin=float(margin), gamma=float(gamma), backend=backend)
    value, _, best = _rows_against(call.world, strategy, q, k, call.k_sizes, key is None, one, spec)
    hits = _label_hits(best, q_codes, key_codes)
    return _reduce(call, value, _local(call, counted), hits, weight, reduction, fn, return_metrics)


def sigmoid_rows(
    query: Tensor,
    key: Tensor,
    positive: Tensor,
    scale: float | Tensor,
    bias: float | Tensor,
    *,
    strategy: str = "ring",
    group: dist.ProcessGroup | None = None,
    backend: str = "auto",
    key_sizes: list[int] | None = None,
) -> Tensor:
    """This rank's rows of the sigmoid loss, sum_j softplus(-l_ij (t q_i . k_j + b)) over the keys of every rank
    (`positive`: each local query's global key index), with no B x B buffer. The gradient reaching a rank's
    keys is the sum over ranks of their rows' gradients (what an all-gather with gradients gives); "ring"
    keeps memory at O(local B x D). No checks: `sigmoid_loss` validates; OpenCLIP's `SigLipLoss` reduces this
    per rank (`integrations.open_clip`). `key_sizes`, every rank's key count if the caller has it, saves the
    collective that counts them."""
    world = World.of(group)
    sizes = row_counts(key, world) if key_sizes is None else key_sizes
    if key is query:
        key = query.view_as(query)  # take the two sides' gradients apart (the block rows' self mode is not this)
    dtype = compute_dtype(query.dtype)
    tb = torch.stack([_as_scalar(x, name, dtype, query.device, "sigmoid_rows", False)
                      for x, name in ((scale, "scale"), (bias, "bias"))])  # fmt: skip
    spec = RowSpec(SIGMOID, positive.long(), torch.arange(sum(sizes), device=query.device), False, backend=backend)
    return _rows_against(world, strategy, query, key, sizes, False, tb, spec)[0]


def sigmoid_loss(
    query: Tensor,
    key: Tensor,
    *,
    positive: Tensor | None = None,
    scale: float | Tensor = 10.0,
    bias: float | Tensor = -10.0,
    normalize: bool = True,
    weight: Tensor | None = None,
    reduction: str = "mean",
    strategy: str = "ring",
    group: dist.ProcessGroup | None = None,
    backend: str = "auto",
) -> Tensor:
    """The pairwise sigmoid loss (SigLIP) over the global batch: every rank's queries against every rank's keys,
    L = (1 / global B) sum_i sum_j softplus(-l_ij (t S_ij + b)) for "mean" (SigLIP's normalisation), the plain
    sum for "sum". `positive` holds global key indices (default: local query i's positive is local key i).
    "ring" (default) keeps memory at O(local B x D) per rank; "gather" all-gathers the keys. Other arguments
    as in `functional.sigmoid_loss`; `strategy` and `group` as in `info_nce`."""
    fn = LOSSES[3]

    def extra(meta: dict[str, float]) -> None:
        if positive is None:
            _default_positive_exists(meta, fn)

    def params() -> tuple[float, float]:  # checked inside the agreement: a bad value on one rank raises on all
        cpu = torch.device("cpu")
        return float(_as_scalar(scale, "scale", torch.float64, cpu, fn, True)), float(
            _as_scalar(bias, "bias", torch.float64, cpu, fn, True)
        )

    options = dict(weight=weight, reduction=reduction, strategy=strategy, backend=backend, normalize=normalize)
    call = agreed(fn, group, query, key, params, extra, positive=positive, **options)
    positive = _global_positive(call, positive, False, fn, query.device)
    q, k = _normalized(query, key, normalize)
    rows = sigmoid_rows(q, k, positive, scale, bias, strategy=strategy, group=group, backend=backend,
                        key_sizes=call.k_sizes)  # fmt: skip
    counted = torch.ones(q.shape[0], dtype=torch.bool, device=q.device)
    return _reduce(call, rows, counted, torch.zeros_like(counted), weight, reduction, fn, False)
