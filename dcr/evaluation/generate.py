"""Batched greedy generation of chat responses, cheap enough for evaluation on a CPU.

Prompts go through the chat template with the generation prompt, are sorted by length and batched with a cap
on padded tokens so each batch pads little (`dcr.modeling.chat.length_batches`), padded on the left (so every
row's next token follows its own prompt), and decoded greedily; only the new tokens are returned, in the
caller's order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import GenerationConfig

from dcr.modeling.chat import MAX_BATCH_TOKENS, collate, encode_prompts, length_batches, pad_id


def eos_ids(model: nn.Module, tokenizer) -> list[int]:
    """Token ids that end a response: the model's generation EOS (one id or several) and the tokenizer's."""
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = configured if isinstance(configured, list) else [configured]
    ids = [int(i) for i in ids if i is not None]
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(int(tokenizer.eos_token_id))
    return ids


@torch.no_grad()
def generate(
    model: nn.Module,
    tokenizer,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 48,
    batch_size: int = 16,
    max_length: int = 512,
    max_batch_tokens: int = MAX_BATCH_TOKENS,
    progress: bool = True,
    desc: str = "generate",
    on_batch: Callable[[list[int], list[str]], None] | None = None,
) -> list[str]:
    """Greedy responses (new tokens only, special tokens dropped) to user prompts, in the order given;
    ``on_batch`` receives each batch's positions in ``prompts`` and responses as soon as they exist; a batch
    holds at most ``batch_size`` prompts and ``max_batch_tokens`` padded prompt tokens."""
    if max_new_tokens < 1 or batch_size < 1:
        raise ValueError("max_new_tokens and batch_size must be at least 1")
    ids = encode_prompts(tokenizer, prompts, max_length=max_length)
    pad, device = pad_id(tokenizer), next(model.parameters()).device
    config = GenerationConfig(
        max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad, eos_token_id=eos_ids(model, tokenizer)
    )
    was_training = model.training
    model.eval()
    out: list[str] = [""] * len(ids)
    try:
        with tqdm(total=len(ids), desc=desc, unit="prompt", disable=not progress) as bar:
            for rows in length_batches([len(x) for x in ids], batch_size, max_batch_tokens):
                input_ids, mask = collate([ids[i] for i in rows], pad, side="left")
                new = model.generate(
                    input_ids=input_ids.to(device), attention_mask=mask.to(device), generation_config=config
                )[:, input_ids.shape[1] :]
                texts = [t.strip() for t in tokenizer.batch_decode(new, skip_special_tokens=True)]
                for i, text in zip(rows, texts, strict=True):
                    out[i] = text
                if on_batch is not None:
                    on_batch(rows, texts)
                bar.update(len(rows))
    finally:
        model.train(was_training)
    return out
