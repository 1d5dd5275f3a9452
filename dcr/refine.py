"""The DCR stage: contrastive refinement of a causal LM at one layer (Lu et al., ICLR 2026).

Class-balanced batches of toxic and seemingly toxic prompts are embedded at layer l, a class-label loss
from `dcr_kernels` (Circle by default) pulls each class together and pushes the classes apart, and only the
layers up to l learn. Batches are embedded with gradient caching, checkpoints are atomic and a resumed run
continues exactly as an uninterrupted one would. The result is a plain Hugging Face model folder.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any

import torch

from dcr.chat import encode_prompts
from dcr.checkpoint import changed_settings, list_checkpoints, load_checkpoint, save_checkpoint
from dcr.config import ConfigError, RefineConfig
from dcr.embedding import batch_embedder, embed_texts
from dcr.export import save_refined
from dcr.gradcache import contrastive_backward
from dcr.jsonl_log import JsonlLog
from dcr.losses import make_loss
from dcr.model import load_model
from dcr.prompts import DataError, load_labelled, split
from dcr.representation import num_layers, resolve_layer
from dcr.runtime import pick_device
from dcr.sampler import BalancedBatchSampler
from dcr.separation import cross_class_cosine, separation_report
from dcr.trainable import add_lora, freeze_above, trainable_parameters

# Settings that do not change the training trajectory, so a resumed run may differ in them.
_RUN_ONLY = {"output_dir", "resume", "save_every", "keep_checkpoints", "eval_every", "progress"}
_SCHEDULES = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}


def _trajectory_settings(config: RefineConfig) -> dict[str, Any]:
    return {k: v for k, v in dataclasses.asdict(config).items() if k not in _RUN_ONLY}


def _check_output_dir(out: Path, config: RefineConfig) -> list[Path]:
    checkpoints = list_checkpoints(out / "checkpoints")
    if not config.resume and (checkpoints or (out / "model").exists() or (out / "metrics.jsonl").exists()):
        raise ConfigError(f"{out} already holds a run; pass --resume to continue it or choose another output_dir")
    return checkpoints


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
    train, validation = splits["train"], splits["validation"]
    labels = list(train["label"])
    if min(labels.count(c) for c in range(len(classes))) < 2:
        raise DataError(f"the training split needs two prompts of every class {classes}; lower val_fraction")
    ids = encode_prompts(
        tokenizer, list(train["text"]), chat_template=config.chat_template, max_length=config.max_length
    )
    return ids, labels, {"text": list(validation["text"]), "label": list(validation["label"])}, classes


def _trainable_model(model, layer: int, config: RefineConfig):
    """Freeze everything above ``layer`` (optionally add LoRA); return the model, optimizer and scheduler."""
    from transformers import get_scheduler

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
    optimizer = torch.optim.AdamW(trainable_parameters(model).values(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = get_scheduler(
        _SCHEDULES[config.schedule], optimizer, num_warmup_steps=config.warmup_steps, num_training_steps=config.steps
    )
    return model, optimizer, scheduler


def refine(config: RefineConfig, data=None) -> Path:
    """Run the DCR stage described by ``config``; return the folder of the refined model.

    ``data`` may be a ``datasets.Dataset`` to train on instead of ``config.data``.
    """
    from tqdm.auto import tqdm

    config.validate()
    out = Path(config.output_dir)
    checkpoints = _check_output_dir(out, config)
    torch.manual_seed(config.seed)
    device = pick_device(config.device)
    model, tokenizer = load_model(config.model, device=device, attention=config.attention)
    try:
        layer = resolve_layer(config.layer, num_layers(model))
    except ValueError as err:
        raise ConfigError(str(err)) from None
    ids, labels, validation, classes = _training_data(config, data, tokenizer)
    try:
        sampler = BalancedBatchSampler(labels, config.batch_size, seed=config.seed)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    model, optimizer, scheduler = _trainable_model(model, layer, config)
    params = list(trainable_parameters(model).values())

    settings = _trajectory_settings(config)
    start = 0
    if config.resume and checkpoints:
        state = load_checkpoint(checkpoints[-1], model, optimizer, scheduler)
        changed = changed_settings(state["settings"], settings, RefineConfig)
        if changed:
            raise ConfigError(f"cannot resume {checkpoints[-1]}: settings changed: {changed}")
        start = state["step"]
    log = JsonlLog(out / "metrics.jsonl", keep_until=start)

    embed = batch_embedder(model, tokenizer, layer, pooling=config.pooling, device=device, precision=config.precision)
    loss_fn = make_loss(
        config.loss, margin=config.margin, gamma=config.gamma, temperature=config.temperature, center=config.center
    )
    micro = config.micro_batch_size or config.batch_size
    can_validate = all(validation["label"].count(c) >= 2 for c in range(len(classes)))

    def validate(step: int) -> None:
        reps = embed_texts(
            model,
            tokenizer,
            validation["text"],
            layer,
            pooling=config.pooling,
            chat_template=config.chat_template,
            max_length=config.max_length,
            batch_size=max(micro, 16),
            device=device,
            precision=config.precision,
        )
        log.write({"step": step, "split": "validation", **separation_report(reps, torch.tensor(validation["label"]))})

    bar = tqdm(total=config.steps, initial=start, disable=not config.progress, desc="dcr refine", unit="step")
    if can_validate and config.eval_every and start == 0:
        validate(0)
    for step in range(start, config.steps):
        began = time.perf_counter()
        rows = sorted(sampler.batch(step), key=lambda i: len(ids[i]))  # length-sorted: little padding
        y = torch.tensor([labels[i] for i in rows], device=device)
        chunks = [[ids[i] for i in rows[k : k + micro]] for k in range(0, len(rows), micro)]
        result, reps = contrastive_backward(embed, chunks, y, loss_fn, cache=len(chunks) > 1)
        grad_norm = torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm or math.inf)
        lr = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        done = step + 1
        log.write(
            {
                "step": done,
                "loss": result.loss.item(),
                "nn_accuracy": result.accuracy.item(),
                "cross_class_cosine": cross_class_cosine(reps, y),
                "grad_norm": float(grad_norm),
                "lr": lr,
                "seconds": time.perf_counter() - began,
            }
        )
        bar.update()
        bar.set_postfix(loss=f"{result.loss.item():.4f}", acc=f"{result.accuracy.item():.3f}")
        if can_validate and (done == config.steps or (config.eval_every and done % config.eval_every == 0)):
            validate(done)
        if config.save_every and (done % config.save_every == 0 or done == config.steps):
            save_checkpoint(
                out / "checkpoints",
                done,
                model,
                optimizer,
                scheduler,
                {"settings": settings, "layer": layer, "classes": classes},
                keep=config.keep_checkpoints,
            )
    bar.close()
    meta = {
        "layer": layer,
        "pooling": config.pooling,
        "classes": classes,
        "chat_template": config.chat_template,
        "loss": config.loss,
        "steps": config.steps,
        "base_model": config.model,
    }
    return save_refined(model, tokenizer, out / "model", meta)
