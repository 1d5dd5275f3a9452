"""The losses as PyTorch custom operators, so that ``torch.compile(..., fullgraph=True)`` traces through them.

Under torch.compile the functional losses call the operator ``dcr_kernels::contrastive_loss`` instead of
running their Python body. TorchDynamo and AOTAutograd see one opaque operator with a fake-tensor
implementation (every output shape follows from the input shapes), so the graph does not break at the
data-dependent steps (input checks, label counts, the backends' own bookkeeping); at run time the operator
runs the eager loss. With a reduction to a scalar it returns the gradients of its differentiable inputs
(query, key, weight, and the temperature or SigLIP's scale and bias) with the loss, computed in the same pass
(the fused backends form them while the data is hot), and the registered backward scales them by the incoming
gradient; with ``reduction="none"`` the backward operator ``dcr_kernels::contrastive_loss_backward``
recomputes the rows under autograd for the vector-Jacobian product. Under ``torch.no_grad()`` no gradient is
formed.

The functional module registers its eager losses in `EAGER`; this module does not import it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor

EAGER: dict[str, Callable[..., Any]] = {}  # filled by dcr_kernels.functional
# the tensor arguments, in the operators' order; "scalar" is the temperature (SigLIP: the scale)
_SLOTS = ("main", "key", "labels", "key_labels", "positive", "weight", "scalar", "bias")
_DIFFERENTIABLE = ("main", "key", "weight", "scalar", "bias")
# the settings after the tensors, in the operators' order (the backward operator takes the first 9)
_SETTINGS = (
    "scalar_value", "bias_value", "margin", "gamma", "normalize", "symmetric", "reduction", "backend",
    "return_metrics", "check_inputs", "grads",
)  # fmt: skip
_SCALAR_NAMES = {"sigmoid_loss": ("scale", "bias")}  # the losses' own names for the scalar and bias slots


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


def _absent(like: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """A fresh empty tensor for an output the call does not produce (outputs must not alias each other)."""
    return like.new_empty(0, dtype=dtype)


def _keywords(name: str, main_name: str, tensors: dict[str, Tensor | None], values: dict[str, Any]) -> dict:
    """The eager loss's keyword arguments from the slots and the settings."""
    scalar_name, bias_name = _SCALAR_NAMES.get(name, ("temperature", None))
    kwargs: dict[str, Any] = {main_name: tensors["main"]}
    kwargs |= {s: tensors[s] for s in ("key", "labels", "key_labels", "positive", "weight") if tensors[s] is not None}
    kwargs |= dict(normalize=values["normalize"], reduction=values["reduction"], backend=values["backend"])
    if name == "circle_loss":
        kwargs |= dict(margin=values["margin"], gamma=values["gamma"])
    else:
        kwargs[scalar_name] = tensors["scalar"] if tensors["scalar"] is not None else values["scalar_value"]
    if bias_name is not None:
        kwargs[bias_name] = tensors["bias"] if tensors["bias"] is not None else values["bias_value"]
    if name == "info_nce":
        kwargs["symmetric"] = values["symmetric"]
    if name != "sigmoid_loss":
        kwargs["return_metrics"] = values["return_metrics"]
    kwargs["check_inputs"] = values["check_inputs"]
    return kwargs


def _run(
    name: str, main_name: str, tensors: dict[str, Tensor | None], values: dict[str, Any], grad: Tensor | None
) -> tuple[Any, list[Tensor]]:
    """The eager loss (leaves with gradients where `values["grads"]` asks for them); its output and the
    gradients of the differentiable slots (empty where absent), for `grad` (None: a scalar loss)."""
    leaves = {
        slot: tensors[slot].detach().requires_grad_()
        for slot in _DIFFERENTIABLE
        if values["grads"] and tensors[slot] is not None and tensors[slot].is_floating_point()
    }
    tensors = {**tensors, **leaves}
    with _autograd_inside():
        out = EAGER[name](**_keywords(name, main_name, tensors, values))
        loss = out.loss if isinstance(out, tuple) else out
        found = torch.autograd.grad(loss, list(leaves.values()), grad, materialize_grads=True) if leaves else ()
    grads = dict(zip(leaves, found, strict=True))
    return out, [
        _fresh(grads[slot], tensors[slot]) if slot in grads else _absent(tensors["main"]) for slot in _DIFFERENTIABLE
    ]


def _fresh(grad: Tensor, like: Tensor) -> Tensor:
    """The gradient in a new tensor laid out as `like` (what the fake implementation promises): an operator's
    outputs may not alias each other, and a gradient can be a broadcast view shared with another input's."""
    return torch.empty_like(like).copy_(grad.detach())


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
    scalar: Tensor | None,
    bias: Tensor | None,
    scalar_value: float,
    bias_value: float,
    margin: float,
    gamma: float,
    normalize: bool,
    symmetric: bool,
    reduction: str,
    backend: str,
    return_metrics: bool,
    check_inputs: bool,
    grads: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    tensors = dict(zip(_SLOTS, (main, key, labels, key_labels, positive, weight, scalar, bias), strict=True))
    settings = (scalar_value, bias_value, margin, gamma, normalize, symmetric, reduction, backend, return_metrics)
    values = dict(zip(_SETTINGS, (*settings, check_inputs, grads and reduction != "none"), strict=True))
    out, found = _run(name, main_name, tensors, values, None)
    loss = out.loss if isinstance(out, tuple) else out
    if not return_metrics or not isinstance(out, tuple):
        return loss.detach().clone(), _absent(main), _absent(main, torch.int64), *found
    counted = torch.as_tensor(out.rows_counted, device=main.device)
    return loss.detach().clone(), out.accuracy.detach().to(torch.float32, copy=True), counted, *found


def _loss_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


@_contrastive_loss.register_fake
def _(name, main_name, main, key, labels, key_labels, positive, weight, scalar, bias, *settings):
    values = dict(zip(_SETTINGS, settings, strict=True))
    none = values["reduction"] == "none"
    loss = main.new_empty((main.shape[0],) if none else (), dtype=_loss_dtype(main))
    if values["return_metrics"] and name != "sigmoid_loss":
        metrics = (main.new_empty((), dtype=torch.float32), main.new_empty((), dtype=torch.int64))
    else:
        metrics = (_absent(main), _absent(main, torch.int64))
    wanted = values["grads"] and not none
    found = [
        torch.empty_like(t) if wanted and t is not None and t.is_floating_point() else _absent(main)
        for t in (main, key, weight, scalar, bias)
    ]
    return loss, *metrics, *found


_PARAMS = ("name", "main_name", *_SLOTS, *_SETTINGS)


def _setup_context(ctx, inputs, output) -> None:
    args = dict(zip(_PARAMS, inputs, strict=True))
    ctx.head = (args["name"], args["main_name"])
    ctx.values = [args[k] for k in _SETTINGS[:9]]
    ctx.rows = args["reduction"] == "none"
    ctx.present = [args[s] is not None for s in _DIFFERENTIABLE]
    ctx.save_for_backward(*([args[s] for s in _SLOTS] if ctx.rows else output[3:]))


def _backward(ctx, grad_loss, _grad_accuracy, _grad_counted, *_grad_grads):
    if grad_loss is None:
        grads = [None] * len(_DIFFERENTIABLE)
    elif ctx.rows:
        grads = list(_contrastive_loss_backward(grad_loss, *ctx.head, *ctx.saved_tensors, *ctx.values))
    else:
        grads = [grad_loss * g for g in ctx.saved_tensors]
    found = dict(zip(_DIFFERENTIABLE, grads, strict=True))
    present = dict(zip(_DIFFERENTIABLE, ctx.present, strict=True))
    slot_grads = [found[s] if s in found and present[s] and found[s].numel() else None for s in _SLOTS]
    return None, None, *slot_grads, *([None] * len(_SETTINGS))


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
    scalar: Tensor | None,
    bias: Tensor | None,
    scalar_value: float,
    bias_value: float,
    margin: float,
    gamma: float,
    normalize: bool,
    symmetric: bool,
    reduction: str,
    backend: str,
    return_metrics: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    tensors = dict(zip(_SLOTS, (main, key, labels, key_labels, positive, weight, scalar, bias), strict=True))
    settings = (scalar_value, bias_value, margin, gamma, normalize, symmetric, reduction, backend, return_metrics)
    values = dict(zip(_SETTINGS[:9], settings, strict=True))
    values |= {"check_inputs": False, "grads": True}
    return tuple(_run(name, main_name, tensors, values, grad_rows)[1])


@_contrastive_loss_backward.register_fake
def _(grad_rows, name, main_name, main, key, labels, key_labels, positive, weight, scalar, bias, *settings):
    return tuple(
        torch.empty_like(t) if t is not None and t.is_floating_point() else _absent(main)
        for t in (main, key, weight, scalar, bias)
    )


def traced_loss(name: str, main_name: str, tensors: dict[str, Tensor | None], **settings: Any):
    """The loss `name` through the custom operator (what the functional losses call under torch.compile):
    `tensors` by slot, `settings` the loss's other arguments (`scalar` and `bias` may be tensors or floats)."""
    scalar, bias = settings.get("scalar", 1.0), settings.get("bias", 0.0)
    differentiable = [tensors.get(s) for s in ("main", "key", "weight")]
    differentiable += [x for x in (scalar, bias) if isinstance(x, Tensor)]
    grads = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in differentiable)
    outputs = _contrastive_loss(
        name,
        main_name,
        *(tensors.get(slot) for slot in _SLOTS[:6]),
        scalar if isinstance(scalar, Tensor) else None,
        bias if isinstance(bias, Tensor) else None,
        0.0 if isinstance(scalar, Tensor) else float(scalar),
        0.0 if isinstance(bias, Tensor) else float(bias),
        float(settings.get("margin", 0.0)),
        float(settings.get("gamma", 0.0)),
        bool(settings["normalize"]),
        bool(settings.get("symmetric", False)),
        settings["reduction"],
        settings["backend"],
        bool(settings.get("return_metrics", False)),
        bool(settings["check_inputs"]),
        grads,
    )
    return outputs[:3]
