"""Removing a direction from everything that writes into the residual stream (single-vector ablation).

For a unit vector u and a coefficient c (1: full ablation, below 1: partial), every matrix whose outputs are
residual-stream vectors loses c times its component along u: W <- W - c u (u^T W) for the attention output
and MLP down projections of every decoder layer (and their biases, b <- b - c (u . b) u), and
E <- E - c (E u) u^T for the token embeddings, whose rows are residual vectors. With c = 1 no layer can
write along u, so the residual stream has no component along u anywhere (before the final norm); nothing
else in the model changes, but for tied embeddings (SmolLM2, for one) the output head, which is the
embedding matrix, loses its reading along u too, as in other single-direction ablations. Layers that
normalise their outputs before the residual sum (Gemma 2 and 3, OLMo 2) or have no `mlp.down_proj`
(mixtures of experts) are refused: editing them would not remove u.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from dcr.modeling.layer_states import decoder_of


def residual_writers(model: nn.Module) -> list[tuple[str, nn.Module, str]]:
    """(name, module, kind) of every module that writes residual-stream vectors: "rows" for the embeddings
    (one residual vector per row), "columns" for the output projections (residual vectors as columns)."""
    decoder = decoder_of(model)
    writers = [("embed_tokens", decoder.embed_tokens, "rows")]
    for i, layer in enumerate(decoder.layers):
        post_norm = any(hasattr(layer, n) for n in ("post_feedforward_layernorm", "pre_feedforward_layernorm"))
        attention, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
        plain = hasattr(attention, "o_proj") and hasattr(mlp, "down_proj")
        if post_norm or not plain:
            raise ValueError(
                f"{type(layer).__name__} cannot have a direction ablated from its weights: the residual stream is "
                "written through normalised outputs or experts; supported are Llama-style layers "
                "(self_attn.o_proj and mlp.down_proj added straight to the residual stream)"
            )
        writers.append((f"layers.{i}.self_attn.o_proj", layer.self_attn.o_proj, "columns"))
        writers.append((f"layers.{i}.mlp.down_proj", layer.mlp.down_proj, "columns"))
    return writers


@torch.no_grad()
def ablate_direction(model: nn.Module, direction: Tensor, coefficient: float = 1.0) -> list[str]:
    """Project `coefficient` of `direction` (unit, residual width) out of every residual writer, in place;
    return the names of the edited modules."""
    if not 0.0 <= coefficient <= 1.0:
        raise ValueError(f"coefficient must be in [0, 1] (1: full ablation), got {coefficient}")
    edited = []
    for name, module, kind in residual_writers(model):
        weight = module.weight
        u = direction.to(device=weight.device, dtype=torch.float32)
        w = weight.float()
        if kind == "rows":
            w -= coefficient * torch.outer(w @ u, u)
        else:
            w -= coefficient * torch.outer(u, u @ w)
        weight.copy_(w.to(weight.dtype))
        if getattr(module, "bias", None) is not None:
            b = module.bias.float()
            module.bias.copy_((b - coefficient * (u @ b) * u).to(module.bias.dtype))
        edited.append(name)
    return edited
