"""Atomic training checkpoints: trainable weights, optimizer, scheduler, RNG and step.

A checkpoint is written into a hidden temporary folder beside its final place and renamed with
``os.replace``, so a crash never leaves a half-written ``step-*`` folder. Frozen weights are not saved: they
come back unchanged from the base model. The step also fixes the sampler position (see `dcr.prompts.sampler`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from dcr.modeling.trainable import trainable_parameters
from dcr.training import rng

PREFIX = "step-"


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
    """Write checkpoint ``root/step-<step>`` atomically and keep only the newest ``keep`` (0: keep all)."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{PREFIX}{step:08d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=root))
    try:
        weights = {n: p.detach().cpu().contiguous() for n, p in trainable_parameters(model).items()}
        save_file(weights, str(tmp / "trainable.safetensors"))
        torch.save(
            {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng.capture()},
            tmp / "training.pt",
        )
        (tmp / "state.json").write_text(json.dumps({"step": step, **meta}, indent=2))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if keep:
        for old in list_checkpoints(root)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any) -> dict[str, Any]:
    """Restore weights, optimizer, scheduler and RNG from ``path``; return its state.json."""
    params = trainable_parameters(model)
    weights = load_file(str(path / "trainable.safetensors"))
    if set(weights) != set(params):
        raise ValueError(
            f"checkpoint {path} does not match the trainable parameters of this run "
            "(different layer, LoRA setting or model?)"
        )
    with torch.no_grad():
        for name, tensor in weights.items():
            params[name].copy_(tensor)
    training = torch.load(path / "training.pt", map_location="cpu", weights_only=True)
    optimizer.load_state_dict(training["optimizer"])
    scheduler.load_state_dict(training["scheduler"])
    rng.restore(training["rng"])
    return json.loads((path / "state.json").read_text())


def changed_settings(saved: dict[str, Any], current: dict[str, Any], config_type: type) -> list[str]:
    """Names of ``current`` settings that differ from a checkpoint's ``saved`` ones; a setting the checkpoint
    lacks (added after it was written) counts as its default in ``config_type``, a dataclass."""
    defaults = {f.name: f.default for f in dataclasses.fields(config_type)}
    return sorted(k for k in current if saved.get(k, defaults.get(k)) != current[k])
