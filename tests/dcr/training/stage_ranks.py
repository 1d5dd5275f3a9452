"""The training stages run as one process or as several gloo ranks (as torchrun would start them), and the
comparison of the weights they learn: shared by the multi-rank and sharded-stage tests."""

from __future__ import annotations

import os

import torch.distributed as dist
from dcr_helpers import prompt_rows, tiny_model_dir, write_jsonl
from safetensors.torch import load_file
from spawn_ranks import free_port, launcher_env, spawn_ranks

from dcr.training.align import align
from dcr.training.refine import refine
from dcr.training.refine_config import RefineConfig


def stage_worker(rank: int, world: int, port: int, stage: str, config) -> None:
    """One rank of `stage` ("refine" or "align"); the stage ends with a barrier after rank 0 saved the model."""
    launcher_env(rank, world, port)
    try:
        (refine if stage == "refine" else align)(config)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def run_stage(stage: str, config, world: int) -> dict:
    """The saved model's weights after running `stage` on `world` processes."""
    path = os.path.join(config.output_dir, "model")
    if world == 1:
        (refine if stage == "refine" else align)(config)
    else:
        done = lambda: os.path.exists(os.path.join(path, "model.safetensors"))  # noqa: E731
        spawn_ranks(stage_worker, world, (free_port(), stage, config), done=done)
    return load_file(os.path.join(path, "model.safetensors"))


def assert_same_weights(a: dict, b: dict, rel: float = 1e-5) -> None:
    """Every weight tensor of the same dtype and equal to relative tolerance `rel` (in norm: Adam's division
    by the running RMS turns fp32 rounding of a near-zero gradient into a visible difference of a single
    entry)."""
    assert a.keys() == b.keys()
    for name, tensor in a.items():
        assert tensor.dtype == b[name].dtype, name
        diff = float((b[name].double() - tensor.double()).norm() / tensor.double().norm().clamp(min=1e-12))
        assert diff < rel, f"{name}: relative difference {diff:.2e}"


def refine_config(tmp_path, name: str, **kw) -> RefineConfig:
    """A 3-step DCR stage on the tiny llama at layer 2, batch 16 in micro-batches of 3, in `tmp_path / name`;
    `kw` replace any setting."""
    data = write_jsonl(tmp_path / "prompts.jsonl", prompt_rows())
    settings = dict(model=str(tiny_model_dir("llama")), layer=2, data=str(data), batch_size=16, micro_batch_size=3,
                    steps=3, lr=1e-3, val_fraction=0.2, progress=False, save_every=0)  # fmt: skip
    return RefineConfig(**{**settings, **kw, "output_dir": str(tmp_path / name)})
