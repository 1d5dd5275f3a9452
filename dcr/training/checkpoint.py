"""Atomic, verified training checkpoints: trainable weights, optimizer, scheduler, RNG and step.

A checkpoint is written into a hidden temporary folder beside its final place and renamed with
``os.replace``, so a crash never leaves a half-written ``step-*`` folder; ``state.json``, written last,
records each binary file's size and SHA-256. On resume the newest checkpoint that verifies is used (a
damaged newer one is reported by path and skipped, with a warning), leftovers of killed writes are removed,
and a failed write (full disk, read-only folder) is one line that names the folder, with the previous
checkpoints left as they were. Frozen weights are not saved: they come back unchanged from the base model.
The step also fixes the sampler position (see `dcr.prompts.sampler`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from safetensors.torch import load_file, save_file
from torch import nn
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

from dcr.config import ConfigError
from dcr.modeling.ranks import collective_device
from dcr.modeling.sharding import any_sharded
from dcr.modeling.trainable import trainable_parameters
from dcr.training import rng

PREFIX = "step-"
TEMPORARY = ".tmp-"
BINARIES = ("trainable.safetensors", "training.pt")  # of a checkpoint written before fingerprints
DCP_METADATA = ".metadata"  # torch.distributed.checkpoint's index of a sharded checkpoint


class CheckpointWriteError(ConfigError):
    """A checkpoint could not be written (no space, read-only folder); the previous ones are intact."""


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and (p / "state.json").is_file()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX) :]))


def save_checkpoint(
    root: Path,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    meta: dict[str, Any],
    keep: int = 2,
) -> Path:
    """Write checkpoint ``root/step-<step>`` atomically and keep only the newest ``keep`` (0: keep all).

    A model with sharded layers (`dcr.modeling.sharding`) is saved with `torch.distributed.checkpoint`:
    every rank calls this and writes its own shards; otherwise rank 0 alone calls it."""
    final = root / f"{PREFIX}{step:08d}"
    sharded = any_sharded(model)
    main = not sharded or dist.get_rank() == 0
    tmp = root / f"{TEMPORARY}{final.name}"

    def fresh_folder() -> None:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()

    def own_files() -> None:
        if sharded:
            dcp.save(_sharded_state(model, optimizer), checkpoint_id=str(tmp))
        else:
            weights = {n: p.detach().cpu().contiguous() for n, p in trainable_parameters(model).items()}
            save_file(weights, str(tmp / "trainable.safetensors"))

    def finish() -> None:
        training = {"optimizer": {} if sharded else optimizer.state_dict(), "scheduler": scheduler.state_dict()}
        torch.save({**training, "rng": rng.capture()}, tmp / "training.pt")
        files = {f.name: _fingerprint(f) for f in sorted(tmp.iterdir()) if f.is_file()}
        (tmp / "state.json").write_text(json.dumps({"step": step, **meta, "files": files}, indent=2))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)

    try:
        _step(sharded, final, fresh_folder if main else None)
        _step(sharded, final, own_files)  # every rank its shards (torch.distributed.checkpoint), or rank 0
        _step(sharded, final, finish if main else None)
    except CheckpointWriteError:
        if main:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    if keep and main:
        for old in list_checkpoints(root)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def _step(sharded: bool, final: Path, work: Callable[[], None] | None) -> None:
    """Run one part of a checkpoint write (None: nothing on this rank); with sharded writes every rank
    learns whether any rank failed and raises then, so none waits in a collective for a rank that gave up."""
    failure: BaseException | None = None
    try:
        if work is not None:
            work()
    except (Exception, CheckpointException) as err:  # torch.save reports a full disk as a RuntimeError
        failure = err
    if sharded:
        failed = torch.tensor([failure is not None], dtype=torch.int32, device=collective_device())
        dist.all_reduce(failed)
        if failed.item() and failure is None:
            raise CheckpointWriteError(f"cannot write checkpoint {final}: another rank failed; see its error")
    if failure is not None:
        err = failure
        reason = err.strerror if isinstance(err, OSError) and err.strerror else (str(err).splitlines() or [""])[0]
        raise CheckpointWriteError(
            f"cannot write checkpoint {final} (full disk or read-only folder?): {type(err).__name__}: {reason}; "
            "the previous checkpoints are kept"
        ) from err


def _sharded_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The trained weights and the optimizer state, keyed by parameter name, as shards where sharded."""
    weights, moments = get_state_dict(model, optimizer)
    trained = trainable_parameters(model)
    return {"model": {k: v for k, v in weights.items() if k in trained}, "optimizer": moments}


def _fingerprint(path: Path) -> dict[str, Any]:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return {"bytes": path.stat().st_size, "sha256": digest.hexdigest()}


def damage(path: Path) -> str | None:
    """What is wrong with checkpoint ``path`` (a file missing, truncated or altered, or an unreadable
    state.json), or None if it verifies. A checkpoint written before fingerprints were recorded only needs
    its files present and non-empty."""
    try:
        state = json.loads((path / "state.json").read_text())
    except (OSError, ValueError):
        return "state.json is missing or unreadable"
    recorded = state.get("files") if isinstance(state, dict) else None
    for name in recorded or BINARIES:
        file = path / name
        if not file.is_file() or file.stat().st_size == 0:
            return f"{name} is missing or empty"
        if recorded is not None and _fingerprint(file) != recorded.get(name):
            return f"{name} does not match its recorded size and SHA-256 (truncated or altered)"
    return None


def newest_intact(checkpoints: list[Path]) -> Path:
    """The newest checkpoint that verifies; each damaged newer one is reported with a warning. None intact:
    a one-line error naming what is wrong with each."""
    problems = []
    for path in reversed(checkpoints):
        why = damage(path)
        if why is None:
            if problems:
                warnings.warn(f"resuming from {path}: skipped {'; '.join(problems)}", RuntimeWarning, stacklevel=2)
            return path
        problems.append(f"{path} ({why})")
    raise ConfigError(f"no intact checkpoint to resume from: {'; '.join(problems)}")


def remove_leftovers(root: Path) -> None:
    """Remove the temporary folders of checkpoint writes that were killed before their rename."""
    if root.is_dir():
        for p in root.iterdir():
            if p.is_dir() and p.name.startswith(TEMPORARY):
                shutil.rmtree(p, ignore_errors=True)


def load_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any) -> dict[str, Any]:
    """Restore weights, optimizer, scheduler and RNG from ``path``; return its state.json.

    Either kind of checkpoint restores either kind of model: a sharded checkpoint (written by any number of
    ranks) is resharded to this run's ranks, or read whole by one process; an ordinary one is spread over
    the shards of a sharded model."""
    params = trainable_parameters(model)
    training = torch.load(path / "training.pt", map_location="cpu", weights_only=True)
    if (path / DCP_METADATA).is_file():
        state = _sharded_state(model, optimizer)
        if set(state["model"]) != set(params):
            raise ValueError(_MISMATCH.format(path=path))
        try:
            dcp.load(state, checkpoint_id=str(path), no_dist=not dist.is_initialized())
        except Exception as err:  # DCP names the missing keys in a wrapped exception
            raise ValueError(f"{_MISMATCH.format(path=path)}: {str(err).splitlines()[0]}") from err
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"],
                       options=StateDictOptions(strict=False))  # fmt: skip
    else:
        weights = load_file(str(path / "trainable.safetensors"))
        if set(weights) != set(params):
            raise ValueError(_MISMATCH.format(path=path))
        if any_sharded(model):
            names = list(params)
            saved = training["optimizer"]
            moments = {
                "state": {names[i]: s for i, s in saved["state"].items()},
                "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in saved["param_groups"]],
            }
            set_state_dict(model, optimizer, model_state_dict=weights, optim_state_dict=moments,
                           options=StateDictOptions(full_state_dict=True, strict=False))  # fmt: skip
        else:
            with torch.no_grad():
                for name, tensor in weights.items():
                    params[name].copy_(tensor)
            optimizer.load_state_dict(training["optimizer"])
    scheduler.load_state_dict(training["scheduler"])
    rng.restore(training["rng"])
    return read_state(path)


def read_state(path: Path) -> dict[str, Any]:
    """The state.json of checkpoint ``path``: its step, the settings it was trained with, and its files."""
    return json.loads((path / "state.json").read_text())


_MISMATCH = (
    "checkpoint {path} does not match the trainable parameters of this run (different layer, LoRA setting or model?)"
)


def changed_settings(saved: dict[str, Any], current: dict[str, Any], config_type: type) -> list[str]:
    """Names of ``current`` settings that differ from a checkpoint's ``saved`` ones; a setting the checkpoint
    lacks (added after it was written) counts as its default in ``config_type``, a dataclass."""
    defaults = {f.name: f.default for f in dataclasses.fields(config_type)}
    return sorted(k for k in current if saved.get(k, defaults.get(k)) != current[k])
