"""Prompt texts to pooled layer-l representations, for training micro-batches and for evaluation."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from dcr.modeling.chat import collate, encode_prompts, pad_id
from dcr.modeling.layer_states import Pooling, represent
from dcr.modeling.runtime import autocast


def batch_embedder(
    model: nn.Module,
    tokenizer,
    layer: int,
    *,
    pooling: Pooling = "last",
    device: torch.device | str = "cpu",
    precision: str = "auto",
) -> Callable[[Sequence[Sequence[int]]], torch.Tensor]:
    """A function from a list of token-id lists to their (B, D) representations at ``layer``."""
    device, pad = torch.device(device), pad_id(tokenizer)

    def embed(ids: Sequence[Sequence[int]]) -> torch.Tensor:
        input_ids, mask = collate(ids, pad)
        with autocast(device, precision):
            return represent(model, input_ids.to(device), mask.to(device), layer, pooling)

    return embed


@torch.no_grad()
def embed_texts(
    model: nn.Module,
    tokenizer,
    texts: Sequence[str],
    layer: int,
    *,
    pooling: Pooling = "last",
    chat_template: bool = True,
    max_length: int = 512,
    batch_size: int = 16,
    device: torch.device | str = "cpu",
    precision: str = "auto",
) -> torch.Tensor:
    """fp32 representations (N, D) of ``texts`` in input order, in eval mode and without gradients.

    Prompts are batched by length to waste little compute on padding.
    """
    ids = encode_prompts(tokenizer, texts, chat_template=chat_template, max_length=max_length)
    embed = batch_embedder(model, tokenizer, layer, pooling=pooling, device=device, precision=precision)
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out = torch.empty(len(ids), 0)
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            reps = embed([ids[i] for i in rows]).float().cpu()
            if out.shape[1] == 0:
                out = torch.empty(len(ids), reps.shape[1])
            out[rows] = reps
    finally:
        model.train(was_training)
    return out
