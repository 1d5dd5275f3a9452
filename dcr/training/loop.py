"""The one training loop of both stages: run folder, optimizer and schedule, resume, step, log, checkpoint.

A stage (`dcr.training.refine`, `dcr.training.align`) prepares its model and data, then hands `train` a
`Stage`: what one optimizer step's forward and backward are, what to log, and what to record in the saved
model's `dcr.json`. Everything else is here, once: AdamW over the trainable parameters with the configured
schedule, exact resume from the newest atomic checkpoint (refused if a setting that changes the trajectory
differs), gradient clipping, the JSONL metrics log, checkpoints every `save_every` steps, and the saved
Hugging Face model folder. Under torchrun or `accelerate launch` every rank runs the loop on its share of
each batch, gradients are summed or averaged over ranks (as the stage says) before the step, and rank 0
alone writes the metrics, the checkpoints and the model.
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from tqdm.auto import tqdm
from transformers import get_scheduler

from dcr.config import ConfigError
from dcr.modeling.export import save_refined
from dcr.modeling.ranks import Ranks, start
from dcr.modeling.runtime import autocast_dtype
from dcr.modeling.sharding import clip_gradients, full_state_dict, is_sharded, shard_layers, trained_state_bytes
from dcr.modeling.trainable import trainable_parameters
from dcr.run_lock import FolderLock, claim
from dcr.training.checkpoint import (
    changed_settings,
    list_checkpoints,
    load_checkpoint,
    newest_intact,
    read_state,
    remove_leftovers,
    save_checkpoint,
)
from dcr.training.config import RUN_ONLY, TrainingConfig
from dcr.training.jsonl_log import JsonlLog
from dcr.training.tracking import Trackers

_SCHEDULES = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}


class Stage(Protocol):
    """What a stage supplies to the loop."""

    name: str  # the command, shown on the progress bar
    checkpoint_extra: dict[str, Any]  # saved beside the settings in every checkpoint
    meta: dict[str, Any]  # written to the saved model's dcr.json
    average_gradients: bool  # across ranks: average (each rank's loss is the global one) or sum (its share)

    def backward(self, step: int) -> dict[str, Any]:
        """Forward and backward of the batch of optimizer step `step` (a pure function of it); the record to log."""

    def started(self, log: Metrics | None, start: int) -> None:
        """Called once before the first step run (start > 0 after a resume): on rank 0, and with sharded
        layers on every rank (each must take part in a forward; `log` is None except on rank 0)."""

    def finished_step(self, log: Metrics | None, done: int) -> None:
        """Called after optimizer step `done` (1-based) is taken and logged; on the ranks `started` is."""


@dataclass(frozen=True)
class Run:
    """An opened run: its checkpoints (oldest first), this process's rank, its device and the claim on its
    folder (given up when the `with` block ends)."""

    checkpoints: list[Path]
    ranks: Ranks
    device: torch.device
    lock: FolderLock

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *exc: object) -> None:
        self.lock.release()


def open_run(config: TrainingConfig) -> Run:
    """Validate, join the launcher's ranks, claim the run folder (`dcr.run_lock`: refused at once while
    another process runs there), refuse to overwrite a finished or started run unless resuming, seed torch
    (the same seed on every rank: identical initial weights). Use as a context manager: leaving it gives
    the folder up."""
    config.validate()
    ranks, device = start(config.device)
    out = Path(config.output_dir)
    lock = claim(out, ranks)
    checkpoints = list_checkpoints(out / "checkpoints")
    if not config.resume and (checkpoints or (out / "model").exists() or (out / "metrics.jsonl").exists()):
        lock.release()
        raise ConfigError(f"{out} already holds a run; pass --resume to continue it or choose another output_dir")
    if ranks.main:
        remove_leftovers(out / "checkpoints")
    ranks.barrier()  # every rank has looked before rank 0 writes
    torch.manual_seed(config.seed)
    return Run(checkpoints, ranks, device, lock)


def trajectory_settings(config: TrainingConfig) -> dict[str, Any]:
    """The settings that determine a run's result (all but the run-only ones)."""
    return {k: v for k, v in dataclasses.asdict(config).items() if k not in RUN_ONLY}


def train(config: TrainingConfig, model, tokenizer, stage: Stage, run: Run) -> Path:
    """Run (or resume) `config.steps` optimizer steps of `stage` on `model`; save and return the model folder."""
    out = Path(config.output_dir)
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    dtypes = {name: t.dtype for name, t in model.state_dict().items()}  # as saved, whatever sharding stores
    sharded = _shard(config, model, stage, run)
    params = list(trainable_parameters(model).values())
    trained_dtype = str(params[0].dtype).removeprefix("torch.") if params else None
    # One fused kernel for the whole update (a third of the foreach one's time on CPU); sharded DTensors keep
    # the foreach implementation.
    fused = True if not sharded and all(p.device.type in ("cpu", "cuda") for p in params) else None
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay, fused=fused)
    scheduler = get_scheduler(
        _SCHEDULES[config.schedule], optimizer, num_warmup_steps=config.warmup_steps, num_training_steps=config.steps
    )
    settings = trajectory_settings(config)
    ranks, checkpoints, main = run.ranks, run.checkpoints, run.ranks.main
    start = 0
    if config.resume and checkpoints:
        path = newest_intact(checkpoints)
        state = read_state(path)  # refused before anything loads when the run would differ
        changed = changed_settings(state["settings"], settings, type(config))
        if changed:
            raise ConfigError(f"cannot resume {path}: settings changed: {changed}")
        if state.get("trained_dtype", trained_dtype) != trained_dtype:
            raise ConfigError(
                f"cannot resume {path}: it trained {state['trained_dtype']} weights, this run would train "
                f"{trained_dtype} ones (--fsdp keeps fp32 master weights of a bf16 or fp16 model); resume with "
                "the --fsdp and --dtype it was started with"
            )
        load_checkpoint(path, model, optimizer, scheduler)
        start = state["step"]
    log = Metrics(out, start, config, stage.name) if main else None
    hooks = main or sharded  # a sharded forward or checkpoint is a collective: every rank takes part
    bar = tqdm(total=config.steps, initial=start, disable=not (config.progress and main), desc=stage.name, unit="step")
    if hooks:
        stage.started(log, start)
    for step in range(start, config.steps):
        began = time.perf_counter()
        record = {"step": step + 1, **stage.backward(step)}
        ranks.reduce_gradients([p for p in params if not is_sharded(p)], mean=stage.average_gradients)
        if sharded:
            grad_norm = clip_gradients(params, config.max_grad_norm or math.inf)
        else:
            grad_norm = torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm or math.inf)
        record.update(grad_norm=float(grad_norm), lr=scheduler.get_last_lr()[0])
        optimizer.step()
        record["trained_state_mb"] = round(trained_state_bytes(params, optimizer) / 2**20, 3)  # this rank's
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        record["seconds"] = time.perf_counter() - began
        if ranks.world > 1:
            record["world_size"] = ranks.world
        bar.update()
        bar.set_postfix(loss=f"{record['loss']:.4f}")
        done = step + 1
        if main:
            log.write(record)
        if hooks:
            stage.finished_step(log, done)
        if config.save_every and (done % config.save_every == 0 or done == config.steps) and hooks:
            extra = {"settings": settings, "trained_dtype": trained_dtype, **stage.checkpoint_extra}
            keep = config.keep_checkpoints
            save_checkpoint(out / "checkpoints", done, model, optimizer, scheduler, extra, keep=keep)
    bar.close()
    if main:
        log.trackers.close()
    meta = {**stage.meta, "world_size": ranks.world, **({"fsdp": True} if sharded else {})}
    weights = full_state_dict(model, dtypes) if sharded else None  # every rank takes part in gathering
    path = out / "model"
    if main:
        save_refined(model, tokenizer, path, meta, merge=config.lora_merge, state_dict=weights)
    ranks.barrier()  # the model is saved before any rank returns its folder
    return path


def _shard(config: TrainingConfig, model, stage: Stage, run: Run) -> bool:
    """Shard the decoder layers over the ranks when asked (`dcr.modeling.sharding`); whether they are."""
    if not config.fsdp:
        return False
    if run.ranks.world == 1:
        warnings.warn("--fsdp on one process has nothing to shard over; training unsharded", stacklevel=3)
        return False
    shard_layers(model, compute_dtype=autocast_dtype(run.device, config.precision), mean=stage.average_gradients)
    return True


class Metrics:
    """The metrics log (JSONL, the record of the run) and the experiment trackers, written together."""

    def __init__(self, out: Path, start: int, config: TrainingConfig, name: str) -> None:
        self.jsonl = JsonlLog(out / "metrics.jsonl", keep_until=start)
        self.prefix = name.split()[-1]
        self.trackers = Trackers(
            [n for n in config.report_to or [] if n != "none"], out, "dcr", dataclasses.asdict(config)
        )

    def write(self, record: dict[str, Any]) -> None:
        self.jsonl.write(record)
        self.trackers.log(record, self.prefix)
