"""The alignment stage: supervised fine-tuning on benign answers plus refusals, loss on response tokens only.

Each step draws a batch from the SFT mix (`dcr.prompts.sft_mix`), renders every pair through the chat template and
scores only the answer tokens (the prompt is context), averaged over the batch's answer tokens and accumulated
over micro-batches. An optional retention term adds the fused contrastive loss (`dcr_kernels`, Circle by
default) at layer l between the mix's refusal prompts and its benign prompts, so the separation the DCR stage
built is kept. Checkpoints, resume, the metrics log and the saved model work as in `dcr.training.refine`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from dcr.config import ConfigError
from dcr.evaluation.perplexity import pair_ids
from dcr.modeling.chat import collate, encode_prompts, pad_id
from dcr.modeling.layer_states import num_layers
from dcr.modeling.model import layer_before_load, load_model, resolve_model_path
from dcr.modeling.prompt_embeddings import batch_embedder
from dcr.modeling.runtime import autocast
from dcr.modeling.trainable import add_lora
from dcr.prompts.sampler import BalancedBatchSampler
from dcr.prompts.sft_mix import build_mix
from dcr.training.align_config import AlignConfig
from dcr.training.loop import Metrics, open_run, train
from dcr.training.objective import make_loss

IGNORE = -100


def response_labels(input_ids: torch.Tensor, attention_mask: torch.Tensor, n_context: Sequence[int]) -> torch.Tensor:
    """Next-token targets aligned with ``input_ids``: the token itself on answer positions, IGNORE elsewhere.

    Rows are right-padded; the first ``n_context[i]`` tokens of row i are prompt (context) and padding is
    ignored, so only answer tokens (and the template's end-of-turn marker) carry loss.
    """
    labels = input_ids.masked_fill(attention_mask == 0, IGNORE)
    for i, n in enumerate(n_context):
        labels[i, :n] = IGNORE
    return labels


def response_loss_sum(
    model, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
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
    stream = np.concatenate(
        [np.random.default_rng(np.random.SeedSequence([seed, 11, e])).permutation(n) for e in range(first, last + 1)]
    )
    offset = start - first * n
    return [int(i) for i in stream[offset : offset + batch_size]]


def model_meta(model: str, revision: str | None = None) -> dict[str, Any]:
    """The ``dcr.json`` a previous stage saved beside the model (empty for a plain model)."""
    path = resolve_model_path(model, revision) / "dcr.json"
    return json.loads(path.read_text()) if path.is_file() else {}


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
        self.embed = batch_embedder(
            model, tokenizer, layer, pooling=config.pooling, device=device, precision=config.precision
        )
        self.loss_fn = make_loss(config.loss, margin=config.margin, gamma=config.gamma, temperature=config.temperature)
        self.weight, self.device = config.retention_weight, device

    def backward(self, step: int) -> dict[str, float]:
        rows = self.sampler.batch(step)
        y = torch.tensor([self.labels[i] for i in rows], device=self.device)
        out = self.loss_fn(self.embed([self.ids[i] for i in rows]).float(), y)
        (self.weight * out.loss).backward()
        return {"retention_loss": out.loss.item(), "retention_nn_accuracy": out.accuracy.item()}


class _AlignStage:
    """One step: a batch of the SFT mix, response-token cross-entropy accumulated over micro-batches, plus the
    retention term when it is on."""

    name = "dcr align"
    average_gradients = False  # each rank's loss is its share of the batch (normalised by the global tokens)

    def __init__(self, config: AlignConfig, model, tokenizer, mix, encoded, retention, run, meta) -> None:
        self.config, self.model, self.encoded, self.retention = config, model, encoded, retention
        self.device, self.ranks = run.device, run.ranks
        self.kinds = mix["kind"]
        self.pad, self.micro = pad_id(tokenizer), config.micro_batch_size or config.batch_size
        self.sharded = config.fsdp and run.ranks.world > 1  # every rank then runs as many micro-batches
        self.checkpoint_extra: dict[str, Any] = {}
        self.meta = meta

    def backward(self, step: int) -> dict[str, Any]:
        config, encoded = self.config, self.encoded
        rows = sorted(batch_rows(len(encoded), config.batch_size, config.seed, step), key=lambda i: len(encoded[i][0]))
        tokens = sum(len(encoded[i][0]) - encoded[i][1] for i in rows)  # the global batch's answer tokens
        kinds = [self.kinds[i] for i in rows]
        share = rows[self.ranks.share(len(rows))]
        total = 0.0
        for part in self.ranks.micro_batches(share, self.micro, len(rows), same_count=self.sharded):
            chunk = [encoded[i] for i in part]
            input_ids, mask = collate([ids for ids, _ in chunk], self.pad)
            labels = response_labels(input_ids, mask, [n for _, n in chunk])
            with autocast(self.device, config.precision):
                device = self.device
                loss_sum = response_loss_sum(self.model, input_ids.to(device), mask.to(device), labels.to(device))
            (loss_sum / tokens).backward()
            total += loss_sum.item()
        record: dict[str, Any] = {
            "loss": self.ranks.sum(total) / tokens,
            "response_tokens": tokens,
            "refusal_pairs": sum(kind == "refusal" for kind in kinds),
        }
        if self.retention is not None:
            record.update(self.retention.backward(step))
        return record

    def started(self, log: Metrics | None, start: int) -> None:
        pass

    def finished_step(self, log: Metrics | None, done: int) -> None:
        pass


def align(config: AlignConfig) -> Path:
    """Run the alignment stage described by ``config``; return the folder of the aligned model."""
    with open_run(config) as run:  # the run folder is this process group's until the stage ends
        if config.retention_weight > 0 and run.ranks.world > 1:
            raise ConfigError("the retention term runs on one process; set retention_weight 0 under torchrun")
        if config.batch_size < run.ranks.world:
            raise ConfigError(f"batch_size {config.batch_size} gives some of the {run.ranks.world} ranks no pairs")
        device = run.device
        upstream = model_meta(config.model, config.revision)
        layer_setting = config.retention_layer if config.retention_layer is not None else upstream.get("layer", 0.5)
        layer = layer_before_load(layer_setting, config.model, config.revision)
        model, tokenizer = load_model(
            config.model, device=device, dtype=config.dtype, attention=config.attention, revision=config.revision
        )
        mix = build_mix(
            config.refusal_share,
            examples=config.examples,
            seed=config.seed,
            benign_sources=config.benign_sources,
            contrast_share=config.contrast_share,
            reserved_sources=config.reserved_sources or (),
        )
        pairs = zip(mix["prompt"], mix["response"], strict=True)
        encoded = [pair_ids(tokenizer, p, r, config.max_length) for p, r in pairs]
        model.requires_grad_(not config.lora)
        if config.lora:
            model = add_lora(
                model, num_layers(model), r=config.lora_r, alpha=config.lora_alpha, dropout=config.lora_dropout
            )
        model.train()
        retention = _Retention(model, tokenizer, mix, layer, config, device) if config.retention_weight > 0 else None
        aligned = {
            "base_model": config.model,
            "steps": config.steps,
            "mix": len(mix),
            "refusal_share": config.refusal_share,
            "contrast_share": config.contrast_share,
            "retention_weight": config.retention_weight,
            "retention_layer": layer,
        }
        stage = _AlignStage(config, model, tokenizer, mix, encoded, retention, run, {**upstream, "aligned": aligned})
        return train(config, model, tokenizer, stage, run)
