"""The alignment stage: supervised fine-tuning on benign answers plus refusals, loss on response tokens only.

Each step draws a batch from the SFT mix (`dcr.sft_data`), renders every pair through the chat template and
scores only the answer tokens (the prompt is context), averaged over the batch's answer tokens and accumulated
over micro-batches. An optional retention term adds the fused contrastive loss (`dcr_kernels`, Circle by
default) at layer l between the mix's refusal prompts and its benign prompts, so the separation the DCR stage
built is kept. Checkpoints, resume, the metrics log and the saved model work as in `dcr.refine`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from dcr.align_config import AlignConfig
from dcr.chat import collate, encode_prompts, pad_id
from dcr.checkpoint import changed_settings, list_checkpoints, load_checkpoint, save_checkpoint
from dcr.config import ConfigError
from dcr.embedding import batch_embedder
from dcr.export import save_refined
from dcr.jsonl_log import JsonlLog
from dcr.losses import make_loss
from dcr.model import load_model, resolve_model_path
from dcr.perplexity import pair_ids
from dcr.representation import num_layers, resolve_layer
from dcr.runtime import autocast, pick_device
from dcr.sampler import BalancedBatchSampler
from dcr.sft_data import build_mix
from dcr.trainable import add_lora, trainable_parameters

IGNORE = -100
# Settings that do not change the training trajectory, so a resumed run may differ in them.
_RUN_ONLY = {"output_dir", "resume", "save_every", "keep_checkpoints", "progress"}
_SCHEDULES = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}


def response_labels(input_ids: torch.Tensor, attention_mask: torch.Tensor, n_context: Sequence[int]) -> torch.Tensor:
    """Next-token targets aligned with ``input_ids``: the token itself on answer positions, IGNORE elsewhere.

    Rows are right-padded; the first ``n_context[i]`` tokens of row i are prompt (context) and padding is
    ignored, so only answer tokens (and the template's end-of-turn marker) carry loss.
    """
    labels = input_ids.masked_fill(attention_mask == 0, IGNORE)
    for i, n in enumerate(n_context):
        labels[i, :n] = IGNORE
    return labels


def response_loss_sum(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      labels: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy of the labelled (answer) tokens given everything before them.

    The output head runs only on the positions that predict an answer token: with a large vocabulary the
    logits of every position would dominate memory and a good part of the time.
    """
    hidden = model.get_decoder()(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
    targets = labels[:, 1:]
    scored = targets != IGNORE
    logits = model.get_output_embeddings()(hidden[:, :-1][scored])
    return F.cross_entropy(logits.float(), targets[scored], reduction="sum")


def batch_rows(n: int, batch_size: int, seed: int, step: int) -> list[int]:
    """Rows of the batch at ``step``: the mix read through seeded per-epoch permutations (a pure function)."""
    start = step * batch_size
    first, last = start // n, (start + batch_size - 1) // n
    stream = np.concatenate([np.random.default_rng(np.random.SeedSequence([seed, 11, e])).permutation(n)
                             for e in range(first, last + 1)])
    offset = start - first * n
    return [int(i) for i in stream[offset : offset + batch_size]]


def model_meta(model: str) -> dict[str, Any]:
    """The ``dcr.json`` a previous stage saved beside the model (empty for a plain model)."""
    path = resolve_model_path(model) / "dcr.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _trajectory_settings(config: AlignConfig) -> dict[str, Any]:
    return {k: v for k, v in dataclasses.asdict(config).items() if k not in _RUN_ONLY}


class _Retention:
    """The retention term: a class-balanced batch of refusal vs benign prompts, contrastive loss at layer l."""

    def __init__(self, model, tokenizer, mix, layer: int, config: AlignConfig, device: torch.device) -> None:
        labels = [int(k == "refusal") for k in mix["kind"]]
        try:
            self.sampler = BalancedBatchSampler(labels, config.retention_batch_size, seed=config.seed)
        except ValueError as err:
            raise ConfigError(f"retention term: {err}") from None
        self.labels = labels
        self.ids = encode_prompts(tokenizer, mix["prompt"], max_length=config.max_length // 2)
        self.embed = batch_embedder(model, tokenizer, layer, pooling=config.pooling, device=device,
                                    precision=config.precision)
        self.loss_fn = make_loss(config.loss, margin=config.margin, gamma=config.gamma,
                                 temperature=config.temperature)
        self.weight, self.device = config.retention_weight, device

    def backward(self, step: int) -> dict[str, float]:
        rows = self.sampler.batch(step)
        y = torch.tensor([self.labels[i] for i in rows], device=self.device)
        out = self.loss_fn(self.embed([self.ids[i] for i in rows]).float(), y)
        (self.weight * out.loss).backward()
        return {"retention_loss": out.loss.item(), "retention_nn_accuracy": out.accuracy.item()}


def align(config: AlignConfig) -> Path:
    """Run the alignment stage described by ``config``; return the folder of the aligned model."""
    config.validate()
    out = Path(config.output_dir)
    checkpoints = list_checkpoints(out / "checkpoints")
    if not config.resume and (checkpoints or (out / "model").exists() or (out / "metrics.jsonl").exists()):
        raise ConfigError(f"{out} already holds a run; pass --resume to continue it or choose another output_dir")
    torch.manual_seed(config.seed)
    device = pick_device(config.device)
    upstream = model_meta(config.model)
    model, tokenizer = load_model(config.model, device=device, attention=config.attention)
    depth = num_layers(model)
    try:
        layer = resolve_layer(config.retention_layer if config.retention_layer is not None
                              else upstream.get("layer", 0.5), depth)
    except ValueError as err:
        raise ConfigError(str(err)) from None

    mix = build_mix(config.refusal_share, examples=config.examples, seed=config.seed,
                    benign_sources=config.benign_sources)
    encoded = [pair_ids(tokenizer, p, r, config.max_length) for p, r in zip(mix["prompt"], mix["response"],
                                                                           strict=True)]
    kinds = mix["kind"]

    model.requires_grad_(not config.lora)
    if config.lora:
        model = add_lora(model, depth, r=config.lora_r, alpha=config.lora_alpha, dropout=config.lora_dropout)
    model.train()
    params = list(trainable_parameters(model).values())
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    from transformers import get_scheduler

    scheduler = get_scheduler(_SCHEDULES[config.schedule], optimizer, num_warmup_steps=config.warmup_steps,
                              num_training_steps=config.steps)
    retention = _Retention(model, tokenizer, mix, layer, config, device) if config.retention_weight > 0 else None

    settings = _trajectory_settings(config)
    start = 0
    if config.resume and checkpoints:
        state = load_checkpoint(checkpoints[-1], model, optimizer, scheduler)
        changed = changed_settings(state["settings"], settings, AlignConfig)
        if changed:
            raise ConfigError(f"cannot resume {checkpoints[-1]}: settings changed: {changed}")
        start = state["step"]
    log = JsonlLog(out / "metrics.jsonl", keep_until=start)
    pad, micro = pad_id(tokenizer), config.micro_batch_size or config.batch_size
    from tqdm.auto import tqdm

    bar = tqdm(total=config.steps, initial=start, disable=not config.progress, desc="dcr align", unit="step")
    for step in range(start, config.steps):
        began = time.perf_counter()
        rows = sorted(batch_rows(len(encoded), config.batch_size, config.seed, step), key=lambda i: len(encoded[i][0]))
        tokens = sum(len(encoded[i][0]) - encoded[i][1] for i in rows)
        total = 0.0
        for k in range(0, len(rows), micro):
            chunk = [encoded[i] for i in rows[k : k + micro]]
            input_ids, mask = collate([ids for ids, _ in chunk], pad)
            labels = response_labels(input_ids, mask, [n for _, n in chunk])
            with autocast(device, config.precision):
                loss_sum = response_loss_sum(model, input_ids.to(device), mask.to(device), labels.to(device))
            (loss_sum / tokens).backward()
            total += loss_sum.item()
        record: dict[str, Any] = {"step": step + 1, "loss": total / tokens, "response_tokens": tokens,
                                  "refusal_pairs": sum(kinds[i] == "refusal" for i in rows)}
        if retention is not None:
            record.update(retention.backward(step))
        grad_norm = torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm or math.inf)
        record.update(grad_norm=float(grad_norm), lr=scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        record["seconds"] = time.perf_counter() - began
        log.write(record)
        bar.update()
        bar.set_postfix(loss=f"{record['loss']:.3f}")
        done = step + 1
        if config.save_every and (done % config.save_every == 0 or done == config.steps):
            save_checkpoint(out / "checkpoints", done, model, optimizer, scheduler, {"settings": settings},
                            keep=config.keep_checkpoints)
    bar.close()
    meta = {**upstream, "aligned": {"base_model": config.model, "steps": config.steps, "mix": len(mix),
                                    "refusal_share": config.refusal_share, "retention_weight": config.retention_weight,
                                    "retention_layer": layer}}
    return save_refined(model, tokenizer, out / "model", meta)
