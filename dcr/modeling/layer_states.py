"""The representation at layer l: a forward that stops after decoder layer l, then pooling over tokens.

Layer l means ``hidden_states[l]`` of a full forward with ``output_hidden_states=True``: the residual stream
after the first l decoder layers (index 0 is the embedding output; for l = depth transformers reports it
after the final norm, and so do we). The truncated forward runs the model's own forward with ``layers`` cut
to the first l and, below the top, the final norm replaced by identity, so rotary embeddings, masks and
attention kernels are exactly the model's, and nothing above l is computed.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import torch
from torch import nn

Pooling = Literal["last", "mean"]


def decoder_of(model: nn.Module) -> nn.Module:
    """The decoder stack (the module with ``layers`` and ``norm``) of a causal LM, PEFT-wrapped or not."""
    for module in model.modules():
        if isinstance(getattr(module, "layers", None), nn.ModuleList) and hasattr(module, "norm"):
            return module
    raise TypeError(f"{type(model).__name__} has no decoder stack with `layers` and `norm`")


def num_layers(model: nn.Module) -> int:
    """Number of decoder layers."""
    return len(decoder_of(model).layers)


def resolve_layer(layer: int | float, depth: int) -> int:
    """Turn an index (1..depth) or a fraction of the depth (0 < f <= 1, a float) into a layer count."""
    if isinstance(layer, bool) or not isinstance(layer, (int, float)):
        raise ValueError(f"layer must be an int index or a float fraction, got {layer!r}")
    if isinstance(layer, float):
        if not 0.0 < layer <= 1.0:
            raise ValueError(f"layer fraction must be in (0, 1], got {layer}")
        return max(1, round(layer * depth))
    if not 1 <= layer <= depth:
        raise ValueError(f"layer index must be in [1, {depth}] for this {depth}-layer model, got {layer}")
    return layer


@contextmanager
def truncated(model: nn.Module, layer: int) -> Iterator[nn.Module]:
    """Within the block the decoder runs only its first ``layer`` layers (no final norm below the top)."""
    decoder = decoder_of(model)
    layers, norm = decoder.layers, decoder.norm
    if not 1 <= layer <= len(layers):
        raise ValueError(f"layer must be in [1, {len(layers)}], got {layer}")
    decoder.layers = nn.ModuleList(list(layers)[:layer])
    if layer < len(layers):
        decoder.norm = nn.Identity()
    try:
        yield decoder
    finally:
        decoder.layers, decoder.norm = layers, norm


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens only, so left- and right-padded prompts get the same rotary phases."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: Pooling = "last") -> torch.Tensor:
    """(B, T, D) states to (B, D): the last real token (any padding side) or the mean over real tokens."""
    mask = attention_mask.to(hidden.dtype)
    if pooling == "last":
        steps = torch.arange(mask.shape[1], device=mask.device)
        last = (attention_mask.long() * (steps + 1)).argmax(-1)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    if pooling == "mean":
        return (hidden * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
    raise ValueError(f"pooling must be 'last' or 'mean', got {pooling!r}")


def represent(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    layer: int,
    pooling: Pooling = "last",
) -> torch.Tensor:
    """Pooled hidden state after decoder layer ``layer`` (B, D), computing only the layers up to it."""
    with truncated(model, layer) as decoder:
        out = decoder(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids(attention_mask),
            use_cache=False,
        )
    return pool(out.last_hidden_state, attention_mask, pooling)
