"""The DCR stage: contrastive refinement of a causal LM at one layer (Lu et al., ICLR 2026).

Class-balanced batches of toxic and seemingly toxic prompts are embedded at layer l, a class-label loss
from `dcr_kernels` (Circle by default) pulls each class together and pushes the classes apart, and only the
layers up to l learn. Batches are embedded with gradient caching, checkpoints are atomic and a resumed run
continues exactly as an uninterrupted one would. The result is a plain Hugging Face model folder.
"""

from __future__ import annotations

from pathlib import Path

import torch

from dcr.config import ConfigError
from dcr.evaluation.separation import cross_class_cosine, separation_report
from dcr.modeling.chat import encode_prompts
from dcr.modeling.model import layer_before_load, load_model
from dcr.modeling.prompt_embeddings import batch_embedder, embed_texts
from dcr.modeling.trainable import add_lora, freeze_above
from dcr.prompts.sampler import BalancedBatchSampler
from dcr.prompts.sets import DataError, load_labelled, split
from dcr.training.gradcache import contrastive_backward
from dcr.training.loop import Metrics, Run, open_run, train
from dcr.training.objective import make_loss
from dcr.training.refine_config import RefineConfig
from dcr_kernels.distributed.comm import gather_rows, row_counts
from dcr_kernels.distributed.world import World


def _training_data(config: RefineConfig, data, tokenizer):
    """Token ids and labels of the training split, the validation split and the class names."""
    labelled, classes = load_labelled(
        data if data is not None else config.data,
        classes=config.classes,
        text_column=config.text_column,
        label_column=config.label_column,
        sources=config.sources,
    )
    splits = split(labelled, config.val_fraction)
    train_split, validation = splits["train"], splits["validation"]
    labels = list(train_split["label"])
    if min(labels.count(c) for c in range(len(classes))) < 2:
        raise DataError(f"the training split needs two prompts of every class {classes}; lower val_fraction")
    ids = encode_prompts(
        tokenizer, list(train_split["text"]), chat_template=config.chat_template, max_length=config.max_length
    )
    return ids, labels, {"text": list(validation["text"]), "label": list(validation["label"])}, classes


def _trainable_model(model, layer: int, config: RefineConfig):
    """Freeze everything above ``layer`` (optionally add LoRA below it)."""
    freeze_above(model, layer, train_embeddings=config.train_embeddings)
    if config.lora:
        model = add_lora(
            model,
            layer,
            r=config.lora_r,
            alpha=config.lora_alpha,
            dropout=config.lora_dropout,
            target_modules=config.lora_target_modules,
        )
    model.train()
    return model


class _RefineStage:
    """One step: a class-balanced contrastive batch, embedded at layer l with gradient caching, the loss's
    gradient pushed back through the layers up to l; validation separation at the configured steps."""

    name = "dcr refine"

    average_gradients = True  # every rank's loss is the global batch's (dcr_kernels.distributed convention)

    def __init__(self, config: RefineConfig, model, tokenizer, layer: int, data, run: Run) -> None:
        self.config, self.model, self.tokenizer, self.layer = config, model, tokenizer, layer
        self.device, self.ranks = run.device, run.ranks
        self.ids, self.labels, self.validation, classes = data
        try:
            self.sampler = BalancedBatchSampler(self.labels, config.batch_size, seed=config.seed)
        except ValueError as err:
            raise ConfigError(str(err)) from None
        self.embed = batch_embedder(
            model, tokenizer, layer, pooling=config.pooling, device=self.device, precision=config.precision
        )
        self.loss_fn = make_loss(
            config.loss,
            margin=config.margin,
            gamma=config.gamma,
            temperature=config.temperature,
            center=config.center,
            strategy=config.strategy if run.ranks.world > 1 else None,
        )
        self.micro = config.micro_batch_size or config.batch_size
        self.sharded = config.fsdp and run.ranks.world > 1  # every rank then embeds as many micro-batches
        self.can_validate = all(self.validation["label"].count(c) >= 2 for c in range(len(classes)))
        self.checkpoint_extra = {"layer": layer, "classes": classes}
        self.meta = {
            "layer": layer,
            "pooling": config.pooling,
            "classes": classes,
            "chat_template": config.chat_template,
            "loss": config.loss,
            "steps": config.steps,
            "base_model": config.model,
        }

    def backward(self, step: int) -> dict:
        batch = sorted(self.sampler.batch(step), key=lambda i: len(self.ids[i]))  # length-sorted: little padding
        rows = batch[self.ranks.share(len(batch))]  # this rank's share of the global batch, in order
        y = torch.tensor([self.labels[i] for i in rows], device=self.device)
        parts = self.ranks.micro_batches(rows, self.micro, len(batch), same_count=self.sharded)
        chunks = [[self.ids[i] for i in part] for part in parts]
        result, reps = contrastive_backward(self.embed, chunks, y, self.loss_fn, cache=len(chunks) > 1)
        if self.ranks.world > 1:  # every rank's rows, for the batch's cross-class cosine
            reps, y = _gathered(reps), _gathered(y)
        return {
            "loss": result.loss.item(),
            "nn_accuracy": result.accuracy.item(),
            "cross_class_cosine": cross_class_cosine(reps, y),
        }

    def _validate(self, log: Metrics | None, step: int) -> None:
        config = self.config
        reps = embed_texts(
            self.model,
            self.tokenizer,
            self.validation["text"],
            self.layer,
            pooling=config.pooling,
            chat_template=config.chat_template,
            max_length=config.max_length,
            batch_size=max(self.micro, 16),
            device=self.device,
            precision=config.precision,
        )
        labels = torch.tensor(self.validation["label"])
        if log is not None:
            log.write({"step": step, "split": "validation", **separation_report(reps, labels)})

    def started(self, log: Metrics | None, start: int) -> None:
        if self.can_validate and self.config.eval_every and start == 0:
            self._validate(log, 0)

    def finished_step(self, log: Metrics | None, done: int) -> None:
        every = self.config.eval_every
        if self.can_validate and (done == self.config.steps or (every and done % every == 0)):
            self._validate(log, done)


def refine(config: RefineConfig, data=None) -> Path:
    """Run the DCR stage described by ``config``; return the folder of the refined model.

    ``data`` may be a ``datasets.Dataset`` to train on instead of ``config.data``.
    """
    with open_run(config) as run:  # the run folder is this process group's until the stage ends
        if config.batch_size < 2 * run.ranks.world:
            raise ConfigError(f"batch_size {config.batch_size} gives some of the {run.ranks.world} ranks no prompts")
        layer = layer_before_load(config.layer, config.model, config.revision)
        model, tokenizer = load_model(
            config.model, device=run.device, dtype=config.dtype, attention=config.attention, revision=config.revision
        )
        training_data = _training_data(config, data, tokenizer)
        model = _trainable_model(model, layer, config)
        stage = _RefineStage(config, model, tokenizer, layer, training_data, run)
        return train(config, model, tokenizer, stage, run)


def _gathered(x: torch.Tensor) -> torch.Tensor:
    """Every rank's rows of x, in rank order (no gradient)."""
    world = World.of()
    return gather_rows(x.contiguous(), row_counts(x, world), world)
