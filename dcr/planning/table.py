"""`dcr plan`: the memory plan of a stage for full training, LoRA, FSDP and FSDP with LoRA, side by side."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from transformers import AutoConfig

from dcr.modeling.layer_states import resolve_layer
from dcr.modeling.model import resolve_model_path
from dcr.planning.config import PlanConfig
from dcr.planning.memory import PRESETS, Architecture, Setting, largest_batch, plan

ROWS = (("weights", "weights"), ("gradients", "gradients"), ("optimizer", "AdamW state"),
        ("fsdp_working", "FSDP gathered layers"), ("activations", "activations (micro-batch)"),
        ("loss", "contrastive loss O(B D)"), ("peak", "peak per GPU"))  # fmt: skip


def architecture(model: str, revision: str | None = None) -> Architecture:
    """A preset's sizes, or those of a model folder, a config.json or a cached Hub id (no weights read)."""
    if model.lower() in PRESETS:
        return Architecture(**PRESETS[model.lower()])
    path = Path(model).expanduser()
    folder = path.parent if path.name == "config.json" and path.is_file() else resolve_model_path(model, revision)
    return Architecture.from_config(AutoConfig.from_pretrained(folder, local_files_only=True))


def columns(config: PlanConfig, arch: Architecture) -> dict[str, Setting]:
    """The four ways to run the stage, at the configured batch and hardware."""
    layer = resolve_layer(config.layer, arch.layers) if config.stage == "refine" else arch.layers
    base = Setting(
        stage=config.stage, layer=layer, gpus=config.gpus, weights=config.dtype, compute=config.compute,
        micro_batch=config.micro_batch_size, seq_len=config.max_length, batch=config.batch_size,
        gradient_checkpointing=config.gradient_checkpointing,
    )  # fmt: skip
    lora = dataclasses.replace(base, lora_r=config.lora_r)
    return {"full": base, "LoRA": lora, "FSDP": dataclasses.replace(base, fsdp=True),
            "FSDP + LoRA": dataclasses.replace(lora, fsdp=True)}  # fmt: skip


def memory_plan(config: PlanConfig) -> dict[str, Any]:
    """Every column's parts (bytes per GPU), whether it fits and the largest contrastive batch that does."""
    arch = architecture(config.model, config.revision)
    budget = int(config.memory_bytes() * (1 - config.reserve))
    result = {"architecture": dataclasses.asdict(arch), "params": arch.params, "budget_bytes": budget, "columns": {}}
    for name, setting in columns(config, arch).items():
        parts = plan(arch, setting)
        result["columns"][name] = {**parts, "fits": parts["peak"] <= budget,
                                   "largest_batch": largest_batch(arch, setting, budget)}  # fmt: skip
    return result


def render(config: PlanConfig) -> str:
    """The plan as a Markdown table (or JSON with --json); also written to --output-dir when given."""
    result = memory_plan(config)
    text = _table(config, result)
    if config.output_dir:
        out = Path(config.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "plan.json").write_text(json.dumps(result, indent=2) + "\n")
        (out / "plan.md").write_text(text + "\n")
    return json.dumps(result, indent=2) if config.json else text


def _table(config: PlanConfig, result: dict[str, Any]) -> str:
    cols = result["columns"]
    gib = lambda b: f"{b / 2**30:.2f}"  # noqa: E731
    lines = [
        f"Memory per GPU (GiB) of `dcr {config.stage}` with {config.model} ({result['params'] / 1e9:.2f} B "
        f"parameters) on {config.gpus} GPU(s) of {config.gpu_memory}, {config.dtype} weights, {config.compute} "
        f"compute, batch {config.batch_size}, micro-batch {config.micro_batch_size} x {config.max_length} tokens:",
        "",
        "| | " + " | ".join(cols) + " |",
        "|---|" + "---:|" * len(cols),
        *(f"| {label} | " + " | ".join(gib(c[key]) for c in cols.values()) + " |" for key, label in ROWS),
        f"| fits (with {config.reserve:.0%} reserve) | "
        + " | ".join("yes" if c["fits"] else "no" for c in cols.values())
        + " |",
    ]
    if config.stage == "refine":
        largest = (f"{c['largest_batch']:,}" if c["largest_batch"] is not None else "-" for c in cols.values())
        lines.append("| largest contrastive batch | " + " | ".join(largest) + " |")
    return "\n".join(lines)
