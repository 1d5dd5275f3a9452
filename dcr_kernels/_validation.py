"""Input checks shared by every loss: clear errors before any kernel runs.

Checks of shape, dtype and device read no data. Checks that read values (NaN / Inf, weights, a tensor
temperature, the range of the logits) synchronise with a GPU; the losses skip them when called with
``check_inputs=False`` (``data=False`` here), which keeps a call free of host synchronisation."""

from __future__ import annotations

import math

import torch
from torch import Tensor

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
REDUCTIONS = ("mean", "sum", "none")


def check_embeddings(name: str, x: Tensor, fn: str, data: bool = True) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{fn}: {name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 2:
        raise ValueError(
            f"{fn}: {name} must be a 2-D (batch, dim) tensor, got shape {tuple(x.shape)}; "
            "flatten or pool the extra dimensions first"
        )
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{fn}: {name} must be float16, bfloat16, float32 or float64, got {x.dtype}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{fn}: {name} is empty (shape {tuple(x.shape)}); pass at least one row of dim >= 1")
    if data and not bool(torch.isfinite(x.detach()).all()):
        bad = int((~torch.isfinite(x.detach())).any(dim=1).sum())
        raise ValueError(f"{fn}: {name} contains NaN or Inf in {bad} row(s); check the model's outputs")


def check_pair(query: Tensor, key: Tensor, fn: str) -> None:
    if key.dtype != query.dtype:
        raise TypeError(f"{fn}: query and key dtypes differ ({query.dtype} vs {key.dtype}); cast one of them")
    if key.device != query.device:
        raise ValueError(f"{fn}: query is on {query.device} but key is on {key.device}; move them together")
    if key.shape[1] != query.shape[1]:
        raise ValueError(f"{fn}: query has dim {query.shape[1]} but key has dim {key.shape[1]}; they must match")


def check_index(name: str, idx: Tensor, length: int, like: Tensor, fn: str, what: str) -> None:
    """An integer vector of `length` entries on the embeddings' device."""
    if not isinstance(idx, Tensor):
        raise TypeError(f"{fn}: {name} must be a torch.Tensor of {what}, got {type(idx).__name__}")
    if idx.dtype.is_floating_point or idx.dtype.is_complex or idx.dtype == torch.bool:
        raise TypeError(f"{fn}: {name} must hold integers ({what}), got {idx.dtype}")
    if idx.dim() != 1 or idx.shape[0] != length:
        raise ValueError(f"{fn}: {name} must have shape ({length},), one entry per row; got {tuple(idx.shape)}")
    if idx.device != like.device:
        raise ValueError(f"{fn}: {name} is on {idx.device} but the embeddings are on {like.device}")


def check_weight(weight: Tensor | None, length: int, like: Tensor, fn: str, data: bool = True) -> None:
    if weight is None:
        return
    if not isinstance(weight, Tensor) or not weight.dtype.is_floating_point:
        raise TypeError(f"{fn}: weight must be a floating-point tensor of per-row weights")
    if weight.dim() != 1 or weight.shape[0] != length:
        raise ValueError(f"{fn}: weight must have shape ({length},); got {tuple(weight.shape)}")
    if weight.device != like.device:
        raise ValueError(f"{fn}: weight is on {weight.device} but the embeddings are on {like.device}")
    if data and (not bool(torch.isfinite(weight).all()) or bool((weight < 0).any())):
        raise ValueError(f"{fn}: weight must be finite and non-negative")


def check_reduction(reduction: str, fn: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"{fn}: reduction must be one of {REDUCTIONS}, got {reduction!r}")


def check_temperature(temperature: float | Tensor, fn: str, data: bool = True) -> None:
    if isinstance(temperature, Tensor):
        if temperature.numel() != 1:
            raise ValueError(f"{fn}: temperature tensor must hold one value, got shape {tuple(temperature.shape)}")
        if not data:
            return
        value = float(temperature.detach())
    else:
        value = float(temperature)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{fn}: temperature must be finite and > 0, got {value}; typical values are 0.01 to 1")


def check_circle_params(margin: float, gamma: float, fn: str) -> None:
    if not (isinstance(margin, (int, float)) and 0.0 <= margin < 1.0):
        raise ValueError(f"{fn}: margin m must be in [0, 1), got {margin!r}; the paper uses 0.25 to 0.4")
    if not (isinstance(gamma, (int, float)) and math.isfinite(gamma) and gamma > 0):
        raise ValueError(f"{fn}: gamma must be finite and > 0, got {gamma!r}; the paper uses 32 to 256")


def largest_row_norm(x: Tensor) -> float:
    """max_i |x_i|, computed without overflowing (the rows are divided by the largest entry first)."""
    x = x.detach()
    top = float(x.abs().amax())
    if top == 0.0:
        return 0.0
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    return float(torch.linalg.vector_norm(x / top, dim=1, dtype=dtype).amax()) * top


def check_logit_range(
    query: Tensor,
    key: Tensor,
    normalize: bool,
    fn: str,
    *,
    temperature: float | Tensor | None = None,
    gamma: float | None = None,
) -> None:
    """A clear error instead of a silent overflow: the logits (s S for the softmax family, Circle's
    gamma (|S| + 1)^2 at most) and, for a learnable temperature, its gradient (which carries s^2 S) must stay
    within the compute dtype's range with room for the sums. |S| is at most 1 for normalised rows and
    max |q_i| max |k_j| otherwise."""
    bound = 1.0 if normalize else largest_row_norm(query) * largest_row_norm(key)
    check_similarity_bound(bound, query.dtype, fn, temperature=temperature, gamma=gamma)


def check_similarity_bound(
    bound: float,
    dtype: torch.dtype,
    fn: str,
    *,
    temperature: float | Tensor | None = None,
    gamma: float | None = None,
) -> None:
    """`check_logit_range` for a known bound on |S| (across ranks: the largest row norms of all ranks)."""
    limit = torch.finfo(torch.float64 if dtype == torch.float64 else torch.float32).max / 2**16
    advice = "use normalize=True (cosine similarities) or scale the embeddings down"
    if gamma is not None:
        if gamma * (bound + 1.0) ** 2 > limit:
            raise ValueError(
                f"{fn}: the Circle logits overflow: |S| can reach {bound:.3g}, and gamma (|S| + 1)^2 = "
                f"{gamma * (bound + 1.0) ** 2:.3g} is beyond the range of the computation ({limit:.3g}); {advice}"
            )
        return
    value = float(temperature.detach()) if isinstance(temperature, Tensor) else float(temperature)
    scale = 1.0 / value
    if scale * bound > limit:
        raise ValueError(
            f"{fn}: the logits overflow: |S| can reach {bound:.3g}, and |S| / temperature = {scale * bound:.3g} is "
            f"beyond the range of the computation ({limit:.3g}); {advice}, or raise the temperature"
        )
    if isinstance(temperature, Tensor) and temperature.requires_grad and scale * scale * max(bound, 1.0) > limit:
        raise ValueError(
            f"{fn}: temperature {value:.3g} is too small to learn: its gradient carries 1 / temperature^2 = "
            f"{scale * scale:.3g} times the similarities, beyond the range of the computation ({limit:.3g}); "
            f"use a temperature of at least {math.sqrt(max(bound, 1.0) / limit):.3g}"
        )
