"""Prompt text to token ids: the chat template with the generation prompt, then padding into a batch.

The representation is read at the position that predicts the first response token, so the prompt is
wrapped as a user turn followed by the assistant header. Over-long prompts are cut from the left to keep
that header.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def encode_prompts(
    tokenizer, texts: Sequence[str], *, chat_template: bool = True, max_length: int = 512
) -> list[list[int]]:
    """Token ids of each prompt (no padding), rendered through the chat template when ``chat_template``."""
    if chat_template:
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("the tokenizer has no chat template; set chat_template to false to embed raw text")
        rendered = [
            tokenizer.apply_chat_template([{"role": "user", "content": t}], add_generation_prompt=True, tokenize=False)
            for t in texts
        ]
        ids = tokenizer(rendered, add_special_tokens=False)["input_ids"]
    else:
        ids = tokenizer(list(texts))["input_ids"]
    return [list(x[-max_length:]) for x in ids]


def pad_id(tokenizer) -> int:
    """The padding id (falls back to EOS; padded positions are masked, so the value does not matter)."""
    tid = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return int(tid) if tid is not None else 0


# Padded tokens per batch: well above a batch of ordinary prompts (80 XSTest prompts pad to under 4,000 tokens),
# so the cap binds only where a few long sequences would pad a whole batch to their length.
MAX_BATCH_TOKENS = 8192


def length_batches(lengths: Sequence[int], batch_size: int, max_tokens: int) -> list[list[int]]:
    """Positions of sequences grouped into batches for padding: sorted by length (stable), cut at ``batch_size``
    sequences or sooner where the padded batch (sequences x the longest) would pass ``max_tokens``.

    Sorting keeps the padding of each batch small; the token cap stops a few long sequences from padding a whole
    batch to their length (a sequence longer than the cap goes alone). Where the cap never binds, the batches are
    those of fixed ``batch_size``.
    """
    batches: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lambda i: lengths[i]):
        if not batches or len(batches[-1]) == batch_size or (len(batches[-1]) + 1) * lengths[i] > max_tokens:
            batches.append([])
        batches[-1].append(i)
    return batches


def collate(ids: Sequence[Sequence[int]], pad: int, side: str = "right") -> tuple[torch.Tensor, torch.Tensor]:
    """Pad token id lists into (input_ids, attention_mask) of shape (B, T) on the given side."""
    width = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), width), pad, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for i, x in enumerate(ids):
        span = slice(0, len(x)) if side == "right" else slice(width - len(x), width)
        input_ids[i, span] = torch.tensor(x, dtype=torch.long)
        mask[i, span] = 1
    return input_ids, mask
