"""The losses as PyTorch custom operators, so that ``torch.compile(..., fullgraph=True)`` traces through them.

Under torch.compile the functional losses call the operator ``dcr_kernels::contrastive_loss`` instead of
running their Python body. TorchDynamo and AOTAutograd see one opaque operator with a fake-tensor
implementation (every output shape follows from the input shapes), so the graph does not break at the
data-dependent steps (input checks, label counts, the backends' own bookkeeping); at run time the operator
runs the eager loss. With a reduction to a scalar it returns the gradients of its differentiable inputs
(query, key, weight, temperature) with the loss, computed in the same pass (the fused backends form them
while the data is hot), and the registered backward scales them by the incoming gradient; with
``reduction="none"`` the backward operator ``dcr_kernels::contrastive_loss_backward`` recomputes the rows
under autograd for the vector-Jacobian product. Under ``torch.no_grad()`` no gradient is formed.

The functional module registers its eager losses in `EAGER`; this module does not import it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor

EAGER: dict[str, Callable[..., Any]] = {}  # filled by dcr_kernels.functional
_SLOTS = ("main", "key", "labels", "key_labels", "positive", "weight", "temperature")
_DIFFERENTIABLE = ("main", "key", "weight", "temperature")


@contextmanager
def _autograd_inside() -> Iterator[None]:
    """A custom operator's implementation runs below PyTorch's autograd dispatch key; the eager loss inside
    needs autograd to form the gradients the operator returns, so the key is let through for the block."""
    C = torch._C
    excluded = C._dispatch_tls_local_exclude_set()
    for key in (C.DispatchKey.AutogradFunctionality, C.DispatchKey.ADInplaceOrView):
        excluded = excluded.remove(key)
    with C._ForceDispatchKeyGuard(C._dispatch_tls_local_include_set(), excluded), torch.enable_grad():
        yield


def _run(
    name: str, main_name: str, settings: dict[str, Any], tensors: dict[str, Tensor | None], grad_output: Tensor | None
) -> tuple[Any, list[Tensor]]:
    """The eager loss on `tensors` (leaves with gradients where `grad_output` or a scalar loss asks for them);
    returns its output and the gradients of the differentiable slots (empty where absent)."""
    wanted = settings.pop("_grads")
    leaves = {
        slot: tensors[slot].detach().requires_grad_()
        for slot in _DIFFERENTIABLE
        if wanted and tensors[slot] is not None and tensors[slot].is_floating_point()
    }
    tensors = {**tensors, **leaves}
    kwargs = {main_name: tensors["main"], **{s: tensors[s] for s in _SLOTS[1:] if tensors[s] is not None}}
    if tensors["temperature"] is None and "temperature" in settings:
        kwargs["temperature"] = settings.pop("temperature")
    settings.pop("temperature", None)
    with _autograd_inside():
        out = EAGER[name](**kwargs, **settings)
        loss = out.loss if isinstance(out, tuple) else out
        found = torch.autograd.grad(loss, list(leaves.values()), grad_output, allow_unused=True) if leaves else ()
    grads = dict(zip(leaves, found, strict=True))
    return out, [
        _absent(tensors["main"]) if grads.get(slot) is None else grads[slot].detach().to(tensors[slot].dtype)
        for slot in _DIFFERENTIABLE
    ]


def _absent(like: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """A fresh empty tensor for an output the call does not produce (outputs must not alias each other)."""
    return like.new_empty(0, dtype=dtype)


@torch.library.custom_op("dcr_kernels::contrastive_loss", mutates_args=())
def _contrastive_loss(
    name: str,
    main_name: str,
    main: Tensor,
    key: Tensor | None,
    labels: Tensor | None,
    key_labels: Tensor | None,
    positive: Tensor | None,
    weight: Tensor | None,
    temperature: Tensor | None,
    temperature_value: float,
    margin: float,
    gamma: float,
    normalize: bool,
    symmetric: bool,
    reduction: str,
    backend: str,
    return_metrics: bool,
    check_inputs: bool,
    grads: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    settings = _settings(name, temperature_value, margin, gamma, normalize, symmetric, reduction, backend)
    settings.update(return_metrics=return_metrics, check_inputs=check_inputs, _grads=grads and reduction != "none")
    tensors = dict(zip(_SLOTS, (main, key, labels, key_labels, positive, weight, temperature), strict=True))
    out, found = _run(name, main_name, settings, tensors, None)
    loss = out.loss if isinstance(out, tuple) else out
    if not return_metrics:
        return loss.detach().clone(), _absent(main), _absent(main, torch.int64), *found
    counted = torch.as_tensor(out.rows_counted, device=main.device)
    return loss.detach().clone(), out.accuracy.detach().clone(), counted, *found


def _settings(
    name: str,
    temperature_value: float,
    margin: float,
    gamma: float,
    normalize: bool,
    symmetric: bool,
    reduction: str,
    backend: str,
) -> dict[str, Any]:
    """The non-tensor arguments of the loss `name`."""
    settings: dict[str, Any] = dict(normalize=normalize, reduction=reduction, backend=backend)
    if name == "circle_loss":
        return {**settings, "margin": margin, "gamma": gamma}
    settings["temperature"] = temperature_value
    if name == "info_nce":
        settings["symmetric"] = symmetric
    return settings


def _loss_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


@_contrastive_loss.register_fake
def _(name, main_name, main, key, labels, key_labels, positive, weight, temperature, *args):
    (temperature_value, margin, gamma, normalize, symmetric, reduction, backend, return_metrics, _, grads) = args
    loss = main.new_empty((main.shape[0],) if reduction == "none" else (), dtype=_loss_dtype(main))
    if return_metrics:
        metrics = (main.new_empty((), dtype=torch.float32), main.new_empty((), dtype=torch.int64))
    else:
        metrics = (_absent(main), _absent(main, torch.int64))
    found = [
        torch.empty_like(t)
        if grads and reduction != "none" and t is not None and t.is_floating_point()
        else _absent(main)
        for t in (main, key, weight, temperature)
    ]
    return loss, *metrics, *found


def _setup_context(ctx, inputs, output) -> None:
    ctx.inputs = inputs[:2] + inputs[9:]  # the non-tensor arguments, for the recomputation
    ctx.rows = inputs[14] == "none"
    ctx.present = [t is not None for t in (inputs[2], inputs[3], inputs[7], inputs[8])]
    ctx.save_for_backward(*(inputs[2:9] if ctx.rows else output[3:]))


def _backward(ctx, grad_loss, _grad_accuracy, _grad_counted, *_grad_grads):
    if grad_loss is None:
        grads = [None] * 4
    elif ctx.rows:
        name, main_name, *settings = ctx.inputs
        grads = list(_contrastive_loss_backward(grad_loss, name, main_name, *ctx.saved_tensors, *settings[:8]))
    else:
        grads = [grad_loss * g for g in ctx.saved_tensors]
    grads = [g if present and g.numel() else None for g, present in zip(grads, ctx.present, strict=True)]
    main, key, weight, temperature = grads
    return None, None, main, key, None, None, None, weight, temperature, *([None] * 10)


_contrastive_loss.register_autograd(_backward, setup_context=_setup_context)


@torch.library.custom_op("dcr_kernels::contrastive_loss_backward", mutates_args=())
def _contrastive_loss_backward(
    grad_rows: Tensor,
    name: str,
    main_name: str,
    main: Tensor,
    key: Tensor | None,
    labels: Tensor | None,
    key_labels: Tensor | None,
    positive: Tensor | None,
    weight: Tensor | None,
    temperature: Tensor | None,
    temperature_value: float,
    margin: float,
    gamma: float,
    normalize: bool,
    symmetric: bool,
    reduction: str,
    backend: str,
    return_metrics: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    settings = _settings(name, temperature_value, margin, gamma, normalize, symmetric, reduction, backend)
    settings.update(check_inputs=False, _grads=True)
    tensors = dict(zip(_SLOTS, (main, key, labels, key_labels, positive, weight, temperature), strict=True))
    return tuple(_run(name, main_name, settings, tensors, grad_rows)[1])


@_contrastive_loss_backward.register_fake
def _(grad_rows, name, main_name, main, key, labels, key_labels, positive, weight, temperature, *settings):
    return tuple(
        torch.empty_like(t) if t is not None and t.is_floating_point() else _absent(main)
        for t in (main, key, weight, temperature)
    )


def traced_loss(name: str, main_name: str, tensors: dict[str, Tensor | None], **settings: Any):
    """The loss `name` through the custom operator (what the functional losses call under torch.compile)."""
    temperature = settings.get("temperature", 1.0)
    differentiable = [tensors.get(s) for s in ("main", "key", "weight")]
    if isinstance(temperature, Tensor):
        differentiable.append(temperature)
    grads = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in differentiable)
    outputs = _contrastive_loss(
        name,
        main_name,
        *(tensors.get(slot) for slot in _SLOTS[:-1]),
        temperature if isinstance(temperature, Tensor) else None,
        0.0 if isinstance(temperature, Tensor) else float(temperature),
        float(settings.get("margin", 0.0)),
        float(settings.get("gamma", 0.0)),
        bool(settings["normalize"]),
        bool(settings.get("symmetric", False)),
        settings["reduction"],
        settings["backend"],
        bool(settings["return_metrics"]),
        bool(settings["check_inputs"]),
        grads,
    )
    return outputs[:3]
