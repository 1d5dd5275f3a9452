"""Random loss cases shared by the backend tests: fresh inputs, label layouts, and a runner that returns
the loss and every gradient (queries, keys, temperature) for a backend or for the float64 oracle."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import oracle
import torch
from torch import Tensor

import dcr_kernels as dk

LOSS_MODES = [
    ("info_nce", "self"),
    ("info_nce", "cross"),
    ("info_nce", "symmetric"),
    ("info_nce", "extra_negatives"),
    ("supcon", "self"),
    ("supcon", "cross"),
    ("circle", "self"),
    ("circle", "cross"),
]
LAYOUTS = ("two_classes", "many_classes", "singletons")


def make_labels(n: int, layout: str, gen: torch.Generator) -> Tensor:
    if layout == "two_classes":
        return torch.randint(0, 2, (n,), generator=gen)
    if layout == "many_classes":
        return torch.randint(0, max(1, n // 3), (n,), generator=gen) * 7 - 5  # arbitrary, negative ids too
    labels = torch.arange(n)  # mostly singletons, a few repeated classes
    labels[: n // 4] = labels[n // 4 : 2 * (n // 4)]
    return labels[torch.randperm(n, generator=gen)]


@dataclass
class Case:
    loss: str
    mode: str
    q: Tensor
    k: Tensor | None
    labels: Tensor | None
    key_labels: Tensor | None
    positive: Tensor | None
    temperature: Tensor
    weight: Tensor | None
    reduction: str
    margin: float = 0.4
    gamma: float = 80.0
    normalize: bool = True  # off for D = 1, where normalised rows are +-1 and every true gradient is zero
    projection: Tensor | None = None  # for reduction="none": the loss vector is projected to a scalar


def make_case(
    loss: str,
    mode: str,
    b: int,
    d: int,
    *,
    seed: int,
    layout: str = "two_classes",
    reduction: str = "mean",
    weighted: bool = False,
    temperature: float | None = None,
    gamma: float = 80.0,
    prenormalize: bool = False,
) -> Case:
    """A random case. `prenormalize` L2-normalises the rows in float64 and turns `normalize` off, so that
    a low-precision run and the oracle see the same rounded unit rows: the comparison then measures the
    loss's own error, not the rounding of normalised rows to the input dtype."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(b, d, generator=gen, dtype=torch.float64)
    n = b + 5 if mode == "extra_negatives" else b
    k = None if mode == "self" else torch.randn(n, d, generator=gen, dtype=torch.float64)
    labels = key_labels = positive = None
    if loss != "info_nce":
        labels = make_labels(b, layout, gen)
        if mode == "cross":
            key_labels = (
                make_labels(n, layout, gen) if layout == "two_classes" else labels[torch.randperm(b, generator=gen)]
            )
    elif mode == "self" and b % 2:
        positive = (torch.arange(b) + 1) % b
    if temperature is None:
        temperature = 0.1 if loss == "supcon" else 0.07
    if prenormalize:
        q = torch.nn.functional.normalize(q, dim=-1)
        k = None if k is None else torch.nn.functional.normalize(k, dim=-1)
    weight = torch.rand(b, generator=gen, dtype=torch.float64) + 0.1 if weighted else None
    projection = torch.randn(b, generator=gen, dtype=torch.float64) if reduction == "none" else None
    return Case(
        loss,
        mode,
        q,
        k,
        labels,
        key_labels,
        positive,
        torch.tensor(temperature, dtype=torch.float64),
        weight,
        reduction,
        gamma=gamma,
        normalize=d > 1 and not prenormalize,
        projection=projection,
    )


def run(case: Case, backend: str | None, dtype: torch.dtype = torch.float64, device: str = "cpu"):
    """Loss value and gradients {q, k, temperature}; backend=None runs the float64 oracle on the same
    (dtype-rounded) inputs."""
    q = case.q.to(dtype).to(device).requires_grad_()
    k = None if case.k is None else case.k.to(dtype).to(device).requires_grad_()
    t = case.temperature.clone().to(device).requires_grad_()
    weight = None if case.weight is None else case.weight.to(device)
    mv = lambda x: None if x is None else x.to(device)  # noqa: E731
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        if backend is None:
            qo = q.detach().double().requires_grad_()
            ko = None if k is None else k.detach().double().requires_grad_()
            out = _oracle(case, qo, ko, t, mv(case.weight))
            inputs = {"q": qo, "k": ko, "temperature": t}
        else:
            out = _library(case, backend, q, k, t, weight, mv)
            inputs = {"q": q, "k": k, "temperature": t}
    scalar = out if case.projection is None else (out.double() * case.projection.to(device)).sum()
    wrt = {
        name: x for name, x in inputs.items() if x is not None and not (name == "temperature" and case.loss == "circle")
    }
    grads = torch.autograd.grad(scalar, list(wrt.values()), allow_unused=True)
    result = {name: (torch.zeros_like(x) if g is None else g) for (name, x), g in zip(wrt.items(), grads, strict=True)}
    return out.detach(), result


def _oracle(case: Case, q, k, t, weight):
    if case.loss == "info_nce":
        pos = None if case.positive is None else case.positive.to(q.device)
        return oracle.info_nce(
            q.cpu(),
            None if k is None else k.cpu(),
            positive=None if pos is None else pos.cpu(),
            temperature=t,
            symmetric=case.mode == "symmetric",
            weight=weight,
            reduction=case.reduction,
            normalize=case.normalize,
        )
    args = (q, case.labels, k, case.key_labels)
    if case.loss == "supcon":
        return oracle.supcon(*args, temperature=t, weight=weight, reduction=case.reduction, normalize=case.normalize)
    return oracle.circle(
        *args, margin=case.margin, gamma=case.gamma, weight=weight, reduction=case.reduction, normalize=case.normalize
    )


def _library(case: Case, backend, q, k, t, weight, mv):
    common = dict(weight=weight, reduction=case.reduction, backend=backend, normalize=case.normalize)
    if case.loss == "info_nce":
        return dk.info_nce(
            q, k, positive=mv(case.positive), temperature=t, symmetric=case.mode == "symmetric", **common
        )
    args = (q, mv(case.labels), k, mv(case.key_labels))
    if case.loss == "supcon":
        return dk.supcon_loss(*args, temperature=t, **common)
    return dk.circle_loss(*args, margin=case.margin, gamma=case.gamma, **common)


def rel_err(a: Tensor, b: Tensor, floor: float = 1e-4) -> float:
    """||a - b|| / max(||b||, floor): relative error, absolute for (near-)zero references."""
    a, b = a.double().cpu(), b.double().cpu()
    return float((a - b).norm() / max(float(b.norm()), floor))


def assert_close_to_oracle(case: Case, backend: str, dtype: torch.dtype, tol: float, device: str = "cpu") -> None:
    loss, grads = run(case, backend, dtype, device)
    ref_loss, ref_grads = run(case, None, dtype)
    assert torch.isfinite(loss).all(), f"non-finite loss {loss}"
    # a loss near 0 is a difference of terms of size ~ 1/temperature: judge it on that scale
    floor = 1e-4 if dtype == torch.float64 else 1.0
    assert rel_err(loss, ref_loss, floor) < tol, f"loss {loss} vs {ref_loss}"
    for name, ref in ref_grads.items():
        g = grads[name]
        assert g.dtype == (ref.dtype if name == "temperature" else dtype), f"{name} grad dtype {g.dtype}"
        assert torch.isfinite(g).all(), f"non-finite {name} gradient"
        # the temperature gradient carries a factor 1/t^2 (~200): judge a near-zero one on the loss's scale
        g_floor = 1e-4 if dtype == torch.float64 else (1.0 if name == "temperature" else 1e-2)
        err = rel_err(g, ref, g_floor)
        assert err < tol, f"{name} gradient rel err {err:.2e} > {tol}"
