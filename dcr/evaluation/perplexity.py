"""General-ability proxy: perplexity of reference answers, counting response tokens only.

Each (prompt, answer) pair is rendered through the chat template; the tokens after the generation prompt
(the answer and the template's end-of-turn marker) are scored, the prompt tokens are context only. When a
template's full conversation does not extend its generation prompt, the answer followed by EOS is scored.
Batches are left-padded so every response ends the row, and logits are computed for the response span only
(the vocabulary projection dominates memory).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from dcr.modeling.chat import MAX_BATCH_TOKENS, collate, length_batches, pad_id
from dcr.modeling.layer_states import position_ids


def pair_ids(tokenizer, prompt: str, answer: str, max_length: int = 1024) -> tuple[list[int], int]:
    """Token ids of the rendered conversation and how many of them are prompt (context) tokens.

    The prompt keeps at most its last ``max_length // 2`` tokens; the response is cut to fit ``max_length``.
    """
    user = [{"role": "user", "content": prompt}]
    head = tokenizer.apply_chat_template(user, add_generation_prompt=True, tokenize=False)
    full = tokenizer.apply_chat_template(user + [{"role": "assistant", "content": answer}], tokenize=False)
    tail = full[len(head) :].rstrip() if full.startswith(head) else answer + (tokenizer.eos_token or "")
    context = tokenizer(head, add_special_tokens=False)["input_ids"][-(max_length // 2) :]
    response = tokenizer(tail, add_special_tokens=False)["input_ids"][: max_length - len(context)]
    return list(context) + list(response), len(context)


@torch.no_grad()
def perplexity(
    model: nn.Module,
    tokenizer,
    pairs: Sequence[tuple[str, str]],
    *,
    batch_size: int = 8,
    max_length: int = 1024,
    max_batch_tokens: int = MAX_BATCH_TOKENS,
    progress: bool = True,
) -> dict[str, float]:
    """Token-weighted perplexity of the answers given their prompts: exp(total NLL / response tokens); a batch
    holds at most ``batch_size`` pairs and ``max_batch_tokens`` padded tokens."""
    encoded = [pair_ids(tokenizer, p, a, max_length) for p, a in pairs]
    batches = length_batches([len(ids) for ids, _ in encoded], batch_size, max_batch_tokens)
    device, pad = next(model.parameters()).device, pad_id(tokenizer)
    total, tokens = 0.0, 0
    was_training = model.training
    model.eval()
    try:
        for batch in tqdm(batches, desc="perplexity", disable=not progress):
            rows = [encoded[i] for i in batch]
            input_ids, mask = collate([ids for ids, _ in rows], pad, side="left")
            lengths = torch.tensor([len(ids) - n_context for ids, n_context in rows])
            keep = int(lengths.max())
            logits = model(
                input_ids=input_ids.to(device),
                attention_mask=mask.to(device),
                position_ids=position_ids(mask).to(device),
                logits_to_keep=keep + 1,
            ).logits
            targets = input_ids[:, -keep:].to(device)
            nll = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), targets, reduction="none")
            scored = (torch.arange(keep) >= keep - lengths[:, None]).to(device)
            total += float(nll[scored].sum())
            tokens += int(scored.sum())
    finally:
        model.train(was_training)
    if tokens == 0:
        raise ValueError("no response tokens to score")
    return {"perplexity": math.exp(total / tokens), "nll": total / tokens, "tokens": tokens, "answers": len(pairs)}
