"""The losses in `torch.nn.functional` style: validate, normalise, dispatch to a backend, reduce.

Notation (docs/design.md, "The math"): queries Q (M x D), keys K (N x D); self mode when `key` is None (K is Q
and the pair (i, i) is never a candidate); S = Q K^T after optional L2 normalisation.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from . import _validation as v
from . import custom_ops
from .backends import resolve, select
from .backends.base import compute_dtype
from .pair_terms import row_dots
from .sigmoid_rows import sigmoid_rows


class ContrastiveOutput(NamedTuple):
    """The loss with in-batch metrics (returned when `return_metrics=True`).

    accuracy: fraction of counted rows whose most similar candidate key is a positive (InfoNCE: its
    positive column; SupCon and Circle: a key with its label), NaN when no row is counted.
    rows_counted / rows_dropped: rows that enter the loss / rows without a positive (or, for Circle,
    without a negative), which contribute nothing. Python ints, or 0-dim tensors when the call ran with
    ``check_inputs=False`` or under torch.compile (reading them would synchronise with the GPU)."""

    loss: Tensor
    accuracy: Tensor
    rows_counted: int | Tensor
    rows_dropped: int | Tensor


def _no_autocast(x: Tensor):
    """Backends choose their own precision (fp32 statistics, input-dtype dots): autocast must not recast
    their matmuls."""
    return torch.autocast(x.device.type, enabled=False)


def _traced(name: str, main_name: str, tensors: dict[str, Tensor | None], **settings) -> Tensor | ContrastiveOutput:
    """Under torch.compile: the loss as one custom operator (`custom_ops`), so the graph does not break."""
    loss, accuracy, counted = custom_ops.traced_loss(name, main_name, tensors, **settings)
    if not settings["return_metrics"]:
        return loss
    return ContrastiveOutput(loss, accuracy, counted, tensors["main"].shape[0] - counted)


def _check_inputs(query: Tensor, key: Tensor | None, fn: str, data: bool = True) -> bool:
    """Validate the embeddings (their values too unless `data` is False); return whether this is self mode."""
    v.check_embeddings("query" if key is not None else "embeddings", query, fn, data)
    if key is not None:
        v.check_embeddings("key", key, fn, data)
        v.check_pair(query, key, fn)
    return key is None


def _normalized(query: Tensor, key: Tensor | None, normalize: bool) -> tuple[Tensor, Tensor]:
    q = F.normalize(query, dim=-1) if normalize else query
    if key is None:
        return q, q
    return q, (F.normalize(key, dim=-1) if normalize else key)


def _prepare(
    query: Tensor, key: Tensor | None, normalize: bool, fn: str, data: bool = True
) -> tuple[Tensor, Tensor, bool]:
    self_mode = _check_inputs(query, key, fn, data)
    return (*_normalized(query, key, normalize), self_mode)


def _scale(temperature: float | Tensor, dtype: torch.dtype, device: torch.device) -> Tensor:
    """s = 1 / temperature as a 0-dim tensor; differentiable when the temperature is a tensor."""
    if isinstance(temperature, Tensor):
        return (1.0 / temperature.reshape(())).to(dtype=dtype, device=device)
    return torch.full((), 1.0 / float(temperature), dtype=dtype, device=device)  # a fill, not a host copy


def _coefficients(
    counted: Tensor, weight: Tensor | None, reduction: str, dtype: torch.dtype, check: bool = True
) -> Tensor | None:
    """Per-row weights of the reduction: w_i / sum_counted w (mean) or w_i (sum), 0 for rows not counted
    (all 0, a zero loss, when no weight is left: the unchecked form of the error below)."""
    w = counted.to(dtype) if weight is None else weight.to(dtype) * counted
    if reduction == "sum":
        return w
    if reduction == "mean":
        total = w.sum()
        if check and weight is not None and float(total.detach()) == 0.0:
            raise ValueError("the weights of the counted rows sum to zero, so their weighted mean is undefined")
        return w / total.clamp_min(torch.finfo(dtype).tiny)
    return None


def _learnt(weight: Tensor | None) -> bool:
    """Whether the row weights need their own gradient: the backends' fused totals treat the reduction's
    coefficients as constants, so such a call takes the per-row path and reduces here."""
    return weight is not None and weight.requires_grad and torch.is_grad_enabled()


def _reduced(rows: Tensor, counted: Tensor, weight: Tensor | None, reduction: str) -> Tensor:
    """Weighted rows (0 where not counted) reduced as asked: the per-row path's form of `_coefficients`."""
    if reduction == "none" or weight is None or not _learnt(weight):
        return rows
    if reduction == "sum":
        return rows.sum()
    return rows.sum() / (weight.to(rows.dtype) * counted).sum().clamp_min(torch.finfo(rows.dtype).tiny)


def _encode_labels(labels: Tensor, key_labels: Tensor) -> tuple[Tensor, Tensor, int]:
    """Map arbitrary integer labels to contiguous class codes shared by queries and keys (the rank of each
    label among the distinct labels), with the number of codes bounded by M + N: every shape is known
    without reading the labels, so there is no host synchronisation."""
    both = torch.cat([labels, key_labels])
    ordered, order = torch.sort(both)
    starts = torch.ones_like(ordered, dtype=torch.int64)
    starts[1:] = (ordered[1:] != ordered[:-1]).long()
    codes = torch.empty_like(order).scatter_(0, order, starts.cumsum(0) - 1)
    return codes[: labels.shape[0]], codes[labels.shape[0] :], both.shape[0]


def _class_counts(codes: Tensor, n_classes: int) -> Tensor:
    """How many rows carry each class code (a bincount of fixed length)."""
    return torch.zeros(n_classes, dtype=torch.int64, device=codes.device).index_add_(0, codes, torch.ones_like(codes))


def _check_labels(labels: Tensor, key_labels: Tensor | None, q: Tensor, k: Tensor, self_mode: bool, fn: str) -> Tensor:
    v.check_index("labels", labels, q.shape[0], q, fn, "class labels")
    if self_mode:
        if key_labels is not None:
            raise ValueError(f"{fn}: key_labels given without key; pass key= too, or drop key_labels")
        return labels
    if key_labels is None:
        raise ValueError(f"{fn}: key given without key_labels; cross mode needs a label for every key row")
    v.check_index("key_labels", key_labels, k.shape[0], k, fn, "class labels")
    return key_labels


def _no_rows_counted(fn: str, why: str, reduction: str, inputs: list[Tensor], m: int) -> Tensor:
    """A zero loss still connected to the inputs' graph, with a warning (documented behaviour)."""
    warnings.warn(f"{fn}: no row is counted ({why}); returning a zero loss", RuntimeWarning, stacklevel=3)
    zero = sum(x.sum() for x in inputs) * 0.0
    return zero.expand(m).clone() if reduction == "none" else zero


def _finish(
    loss: Tensor, correct: Callable[[], Tensor], counted: Tensor, return_metrics: bool, as_ints: bool = True
) -> Tensor | ContrastiveOutput:
    """The loss, or with `return_metrics` the loss and the top-1 accuracy over the counted rows (NaN when
    none is counted). `correct` gives each row's hit when called: the backends track each row's best column
    only when metrics are asked for (`argmax=return_metrics`), so it is called only then. The row counts
    are ints with `as_ints`, else 0-dim tensors (no host synchronisation)."""
    if not return_metrics:
        return loss
    with torch.no_grad():
        n = counted.sum()
        acc = (correct() & counted).sum() / n
    if as_ints:
        return ContrastiveOutput(loss, acc, int(n), counted.shape[0] - int(n))
    return ContrastiveOutput(loss, acc, n, counted.shape[0] - n)


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
    backend: str = "auto",
    return_metrics: bool = False,
    check_inputs: bool = True,
) -> Tensor | ContrastiveOutput:
    """InfoNCE: L_i = lse_{j in A(i)} z_ij - z_{i,p(i)} with z = S / temperature.

    Cross mode (`key` given): the positive of query i is key row `positive[i]` (default i); key rows
    beyond the queries act as extra negatives. Self mode (`key=None`): the batch holds two views stacked,
    [x_1..x_n, x'_1..x'_n], and row i's positive is row (i + B/2) mod B (NT-Xent), unless `positive` says
    otherwise; the pair (i, i) is never a candidate. `symmetric=True` (cross mode, M = N, default
    positives) averages the row loss and the column loss, as CLIP does. `temperature` may be a tensor
    (learnable; its gradient is computed). Returns the loss reduced by `reduction` (weighted by `weight`
    per row), or a `ContrastiveOutput` with top-1 accuracy when `return_metrics=True`.
    `check_inputs=False` skips the checks that read values (NaN / Inf, weights, index ranges, the logits'
    range, the no-row-counted warning) so that the call never synchronises with the GPU; shapes, dtypes and
    devices are still checked.
    """
    fn = "info_nce"
    if torch.compiler.is_compiling():
        tensors = dict(main=query, key=key, positive=positive, weight=weight)
        return _traced(
            fn,
            "query",
            tensors,
            scalar=temperature,
            normalize=normalize,
            symmetric=symmetric,
            reduction=reduction,
            backend=backend,
            return_metrics=return_metrics,
            check_inputs=check_inputs,
        )
    self_mode = _check_inputs(query, key, fn, check_inputs)
    q, k = query, (query if key is None else key)  # raw until the per-row path normalises them
    m, n = q.shape[0], k.shape[0]
    if symmetric:
        if self_mode or n != m or positive is not None:
            raise ValueError(
                f"{fn}: symmetric=True needs key with as many rows as query (got {m} and "
                f"{'none' if self_mode else n}) and the default positives (row i with row i)"
            )
    default_pairs = positive is None and not self_mode
    positive = _positives(positive, m, n, self_mode, q, fn, check_inputs)
    v.check_weight(weight, m, q, fn, check_inputs)
    v.check_reduction(reduction, fn)
    v.check_temperature(temperature, fn, check_inputs)
    if check_inputs:
        v.check_logit_range(q, k, normalize, fn, temperature=temperature)
    impl = resolve(backend, q, fn)
    dtype = compute_dtype(q.dtype)
    s = _scale(temperature, dtype, q.device)
    counted = torch.ones(m, dtype=torch.bool, device=q.device)
    coeff = _coefficients(counted, weight, reduction, dtype, check_inputs)
    coeff = None if _learnt(weight) else coeff
    if coeff is not None and symmetric:
        coeff = coeff * 0.5
    if coeff is not None and hasattr(impl, "info_nce_total"):
        with _no_autocast(q):
            stats = impl.info_nce_total(
                q,
                k,
                s,
                self_mode=self_mode,
                positive=None if default_pairs else positive,
                coeff=coeff,
                col_coeff=coeff if symmetric else None,
                normalize=normalize,
            )
        if stats is not None:
            return _finish(stats.total, lambda: stats.argmax == positive, counted, return_metrics, check_inputs)
    q, k = _normalized(query, key, normalize)
    with _no_autocast(q):
        stats = impl.softmax_stats(
            q,
            k,
            s,
            self_mode=self_mode,
            columns=symmetric,
            coeff=coeff,
            col_coeff=coeff if symmetric else None,
            argmax=return_metrics,
        )
    target = s * row_dots(q.to(dtype), k.to(dtype)[positive])
    if coeff is None:
        rows = stats.lse - target
        if symmetric:
            rows = 0.5 * (rows + stats.col_lse - target)
        loss = _reduced(rows if weight is None else rows * weight.to(dtype), counted, weight, reduction)
    else:
        loss = stats.total - ((2.0 if symmetric else 1.0) * coeff * target).sum()
    return _finish(loss, lambda: stats.argmax == positive, counted, return_metrics, check_inputs)


def _positives(
    positive: Tensor | None, m: int, n: int, self_mode: bool, q: Tensor, fn: str, check: bool = True
) -> Tensor:
    rows = torch.arange(m, device=q.device)
    if positive is None:
        if self_mode:
            if m % 2:
                raise ValueError(
                    f"{fn}: in self mode the default positive of row i is row (i + B/2) mod B (two stacked "
                    f"views), which needs an even batch; got B={m}. Pass positive= or key="
                )
            return (rows + m // 2) % m
        if n < m:
            raise ValueError(f"{fn}: key has {n} rows but query has {m}; the default positive of query i is key i")
        return rows
    v.check_index("positive", positive, m, q, fn, "key row indices")
    positive = positive.long()
    if not check:
        return positive
    if bool(((positive < 0) | (positive >= n)).any()):
        raise ValueError(f"{fn}: positive indices must lie in [0, {n}) (the key rows)")
    if self_mode and bool((positive == rows).any()):
        raise ValueError(f"{fn}: in self mode a row cannot be its own positive (positive[i] == i)")
    return positive


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
    backend: str = "auto",
    return_metrics: bool = False,
    check_inputs: bool = True,
) -> Tensor | ContrastiveOutput:
    """Supervised contrastive loss, the L_out form of Khosla et al. (2020).

    L_i = lse_{j in A(i)} z_ij - (1/|P(i)|) sum_{j in P(i)} z_ij with z = S / temperature and
    P(i) = {j in A(i): y_j = y_i}. Self mode (`key=None`) excludes (i, i); cross mode scores labelled
    queries against separately labelled keys. Rows without a positive are not counted (see
    `return_metrics`); if no row is counted the loss is zero and a RuntimeWarning is raised.
    `check_inputs=False` skips the checks that read values (NaN / Inf, weights, index ranges, the logits'
    range, the no-row-counted warning) so that the call never synchronises with the GPU; shapes, dtypes and
    devices are still checked.
    """
    fn = "supcon_loss"
    if torch.compiler.is_compiling():
        tensors = dict(main=embeddings, labels=labels, key=key, key_labels=key_labels, weight=weight)
        return _traced(
            fn,
            "embeddings",
            tensors,
            scalar=temperature,
            normalize=normalize,
            reduction=reduction,
            backend=backend,
            return_metrics=return_metrics,
            check_inputs=check_inputs,
        )
    q, k, self_mode = _prepare(embeddings, key, normalize, fn, check_inputs)
    key_labels = _check_labels(labels, key_labels, q, k, self_mode, fn)
    v.check_weight(weight, q.shape[0], q, fn, check_inputs)
    v.check_reduction(reduction, fn)
    v.check_temperature(temperature, fn, check_inputs)
    if check_inputs:
        v.check_logit_range(q, k, normalize, fn, temperature=temperature)
    impl = resolve(backend, q, fn)
    dtype = compute_dtype(q.dtype)
    q_codes, k_codes, n_classes = _encode_labels(labels, key_labels)
    n_pos = _class_counts(k_codes, n_classes)[q_codes] - int(self_mode)
    counted = n_pos > 0
    s = _scale(temperature, dtype, q.device)
    if check_inputs and not bool(counted.any()):
        loss = _no_rows_counted(
            fn, "every class occurs once, so no row has a positive", reduction, [q, k, s], q.shape[0]
        )
        if not return_metrics:
            return loss
        with torch.no_grad(), _no_autocast(q):
            argmax = impl.softmax_stats(q, k, s, self_mode=self_mode, columns=False).argmax
        return _finish(loss, lambda: _label_hits(argmax, q_codes, k_codes), counted, True)
    coeff = _coefficients(counted, weight, reduction, dtype, check_inputs)
    coeff = None if _learnt(weight) else coeff
    with _no_autocast(q):
        stats = impl.softmax_stats(q, k, s, self_mode=self_mode, columns=False, coeff=coeff, argmax=return_metrics)
    qd, kd = q.to(dtype), k.to(dtype)
    class_sum = torch.zeros(n_classes, q.shape[1], dtype=dtype, device=q.device).index_add(0, k_codes, kd)
    positive_sum = class_sum[q_codes] - qd if self_mode else class_sum[q_codes]
    target = s * row_dots(qd, positive_sum) / n_pos.clamp(min=1)
    if coeff is None:
        rows = stats.lse - target
        rows = rows if weight is None else rows * weight.to(dtype)
        loss = _reduced(torch.where(counted, rows, 0.0), counted, weight, reduction)
    else:
        loss = stats.total - (coeff * target).sum()
    hits = lambda: _label_hits(stats.argmax, q_codes, k_codes)  # noqa: E731
    return _finish(loss, hits, counted, return_metrics, check_inputs)


def _label_hits(argmax: Tensor, q_codes: Tensor, k_codes: Tensor) -> Tensor:
    """Whether each row's most similar candidate key has the row's label (False without candidates)."""
    return (k_codes[argmax.clamp(min=0)] == q_codes) & (argmax >= 0)


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
    backend: str = "auto",
    return_metrics: bool = False,
    check_inputs: bool = True,
) -> Tensor | ContrastiveOutput:
    """Circle loss (Sun et al., 2020) with class labels: L_i = softplus(LSE_P z + LSE_N z).

    Positives P(i): other keys with label y_i; negatives N(i): keys with another label. With cosine
    similarities S (`normalize=True`), z_ij = -gamma a_ij (S_ij - (1 - m)) on positives with
    a_ij = relu(1 + m - S_ij), and z_ij = gamma a_ij (S_ij - m) on negatives with a_ij = relu(S_ij + m);
    the a_ij are detached. Defaults follow pytorch-metric-learning (m = 0.4, gamma = 80). Rows without a
    positive or a negative are not counted; if none is counted the loss is zero with a RuntimeWarning.
    `check_inputs=False` skips the checks that read values (NaN / Inf, weights, index ranges, the logits'
    range, the no-row-counted warning) so that the call never synchronises with the GPU; shapes, dtypes and
    devices are still checked.
    """
    fn = "circle_loss"
    if torch.compiler.is_compiling():
        tensors = dict(main=embeddings, labels=labels, key=key, key_labels=key_labels, weight=weight)
        return _traced(
            fn,
            "embeddings",
            tensors,
            margin=margin,
            gamma=gamma,
            normalize=normalize,
            reduction=reduction,
            backend=backend,
            return_metrics=return_metrics,
            check_inputs=check_inputs,
        )
    v.check_circle_params(margin, gamma, fn)
    q, k, self_mode = _prepare(embeddings, key, normalize, fn, check_inputs)
    key_labels = _check_labels(labels, key_labels, q, k, self_mode, fn)
    v.check_weight(weight, q.shape[0], q, fn, check_inputs)
    v.check_reduction(reduction, fn)
    if check_inputs:
        v.check_logit_range(q, k, normalize, fn, gamma=gamma)
    impl = resolve(backend, q, fn)
    dtype = compute_dtype(q.dtype)
    q_codes, k_codes, n_classes = _encode_labels(labels, key_labels)
    same = _class_counts(k_codes, n_classes)[q_codes]
    counted = (same - int(self_mode) > 0) & (k.shape[0] - same > 0)
    args = dict(margin=float(margin), gamma=float(gamma), self_mode=self_mode)
    if check_inputs and not bool(counted.any()):
        why = "no row has both a positive and a negative (a single class, or singletons only)"
        loss = _no_rows_counted(fn, why, reduction, [q, k], q.shape[0])
        if not return_metrics:
            return loss
        with torch.no_grad(), _no_autocast(q):
            argmax = impl.circle_stats(q, k, q_codes, k_codes, **args).argmax
        return _finish(loss, lambda: _label_hits(argmax, q_codes, k_codes), counted, True)
    coeff = _coefficients(counted, weight, reduction, dtype, check_inputs)
    coeff = None if _learnt(weight) else coeff
    with _no_autocast(q):
        stats = impl.circle_stats(q, k, q_codes, k_codes, **args, coeff=coeff, argmax=return_metrics)
    if coeff is None:
        rows = stats.row_loss if weight is None else stats.row_loss * weight.to(dtype)
        loss = _reduced(torch.where(counted, rows, 0.0), counted, weight, reduction)
    else:
        loss = stats.total
    hits = lambda: _label_hits(stats.argmax, q_codes, k_codes)  # noqa: E731
    return _finish(loss, hits, counted, return_metrics, check_inputs)


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
    backend: str = "auto",
    check_inputs: bool = True,
) -> Tensor:
    """Pairwise sigmoid loss (SigLIP, Zhai et al. 2023): L_i = sum_j softplus(-l_ij (t S_ij + b)) over every
    key, with l_ij = +1 for the positive key j = `positive[i]` (default i) and -1 for all others (key rows
    beyond the queries are negatives of every query). `scale` (t) and `bias` (b) may be tensors (learnable;
    their gradients are computed). `reduction="mean"` averages the rows, which is SigLIP's sum over pairs
    divided by the batch. No softmax: each pair is scored alone, so rows need no shared statistic.
    `check_inputs=False` skips the checks that read values, as for the other losses.
    """
    fn = "sigmoid_loss"
    if torch.compiler.is_compiling():
        tensors = dict(main=query, key=key, positive=positive, weight=weight)
        return _traced(
            fn,
            "query",
            tensors,
            scalar=scale,
            bias=bias,
            normalize=normalize,
            reduction=reduction,
            backend=backend,
            return_metrics=False,
            check_inputs=check_inputs,
        )
    if key is None:
        raise ValueError(f"{fn}: key is required (query i is scored against every key row, its positive included)")
    _check_inputs(query, key, fn, check_inputs)
    m, n = query.shape[0], key.shape[0]
    positive = _positives(positive, m, n, False, query, fn, check_inputs)
    v.check_weight(weight, m, query, fn, check_inputs)
    v.check_reduction(reduction, fn)
    dtype = compute_dtype(query.dtype)
    t, b = (
        _as_scalar(x, name, dtype, query.device, fn, check_inputs) for x, name in ((scale, "scale"), (bias, "bias"))
    )
    q, k = _normalized(query, key, normalize)
    on = "triton" if select(backend, q, fn) == "triton" else "chunked"  # the reference shares the chunked rows
    with _no_autocast(q):
        rows = sigmoid_rows(q, k, positive, t, b, backend=on)
    if reduction == "none":
        return rows if weight is None else rows * weight.to(dtype)
    if weight is None:
        return rows.sum() if reduction == "sum" else rows.mean()
    total = (rows * weight.to(dtype)).sum()
    return total if reduction == "sum" else total / weight.to(dtype).sum().clamp_min(torch.finfo(dtype).tiny)


def _as_scalar(x: float | Tensor, name: str, dtype: torch.dtype, device: torch.device, fn: str, check: bool) -> Tensor:
    """A scalar setting as a 0-dim tensor of the compute dtype (differentiable when it is a tensor)."""
    if isinstance(x, Tensor):
        if x.numel() != 1:
            raise ValueError(f"{fn}: {name} tensor must hold one value, got shape {tuple(x.shape)}")
        if check and not bool(torch.isfinite(x.detach()).all()):
            raise ValueError(f"{fn}: {name} must be finite, got {float(x.detach())}")
        return x.reshape(()).to(dtype=dtype, device=device)
    if not math.isfinite(float(x)):
        raise ValueError(f"{fn}: {name} must be finite, got {x}")
    return torch.full((), float(x), dtype=dtype, device=device)


custom_ops.EAGER.update(info_nce=info_nce, supcon_loss=supcon_loss, circle_loss=circle_loss, sigmoid_loss=sigmoid_loss)
