"""Which parameters the DCR stage trains: the decoder layers up to l (fully, or through LoRA adapters).

Everything above layer l (later layers, the final norm below the top, the LM head) is frozen, and so are
the token embeddings unless asked for: SmolLM2-style models tie them to the LM head, so training them
would change the output layer.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from dcr.modeling.layer_states import decoder_of


def freeze_above(model: nn.Module, layer: int, *, train_embeddings: bool = False) -> nn.Module:
    """Make only decoder layers 1..``layer`` trainable (plus the final norm when ``layer`` is the top)."""
    decoder = decoder_of(model)
    model.requires_grad_(False)
    for block in list(decoder.layers)[:layer]:
        block.requires_grad_(True)
    if layer == len(decoder.layers):
        decoder.norm.requires_grad_(True)
    if train_embeddings:
        if getattr(model.config, "tie_word_embeddings", False):
            raise ValueError(
                "train_embeddings is not allowed for a model with tied input/output embeddings: "
                "it would change the frozen LM head"
            )
        decoder.embed_tokens.requires_grad_(True)
    return model


def add_lora(
    model: nn.Module,
    layer: int,
    *,
    r: int = 16,
    alpha: float = 32.0,
    dropout: float = 0.0,
    target_modules: Sequence[str] | None = None,
) -> nn.Module:
    """Wrap ``model`` with PEFT LoRA adapters on the linear layers of decoder layers 1..``layer`` only.

    ``target_modules`` are short names (e.g. ``q_proj``); by default every linear layer in those blocks.
    """
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as err:
        raise ImportError("LoRA needs the optional dependency peft: pip install 'dcr-kernels[lora]'") from err
    below = {id(m) for block in list(decoder_of(model).layers)[:layer] for m in block.modules()}
    names = [
        name
        for name, m in model.named_modules()
        if id(m) in below
        and isinstance(m, nn.Linear)
        and (not target_modules or name.rsplit(".", 1)[-1] in target_modules)
    ]
    if not names:
        raise ValueError(f"no linear layer named {list(target_modules or [])} below layer {layer}")
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=names, bias="none")
    return get_peft_model(model, config)


def trainable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """Named parameters that receive gradients."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}
