"""Settings of `dcr plan`."""

from __future__ import annotations

import re
from dataclasses import dataclass

from dcr.config import ConfigError, Settings, option

_UNITS = {"": 2**30, "gb": 10**9, "gib": 2**30, "mb": 10**6, "mib": 2**20}


@dataclass
class PlanConfig(Settings):
    """Everything `dcr plan` needs."""

    model: str = option(
        "default",
        "Model: a preset (qwen2.5-1.5b, llama-3-8b, llama-3-70b), a model folder or its config.json, a cached Hub "
        "id, or 'default' (the embedded SmolLM2-135M-Instruct). Only the configuration is read.",
        topic="model",
    )
    revision: str | None = option(None, "Revision of a Hub-id model in the local cache.", topic="model")
    stage: str = option(
        "refine", "Stage: refine (layers up to l train) or align (every layer).", ("refine", "align"), "model"
    )
    layer: int | float = option(0.5, "Layer l of the DCR stage: an index 1..depth or a fraction.", topic="model")
    gpus: int = option(1, "GPUs (ranks) the stage runs on.", topic="hardware")
    gpu_memory: str = option("80GB", "Memory of one GPU, e.g. 80GB, 24GiB, 40000MB.", topic="hardware")
    reserve: float = option(
        0.1, "Share of each GPU's memory kept for the CUDA context and the allocator's cache.", topic="hardware"
    )
    dtype: str = option("bf16", "Weights dtype.", ("fp32", "bf16", "fp16"), "training")
    compute: str = option("bf16", "Compute dtype (autocast / FSDP).", ("fp32", "bf16", "fp16"), "training")
    batch_size: int = option(1024, "Global contrastive batch of the DCR stage.", topic="training")
    micro_batch_size: int = option(32, "Micro-batch of gradient caching (refine) or accumulation (align).",
                                   topic="training")  # fmt: skip
    max_length: int = option(256, "Tokens per prompt (or prompt and answer) in a micro-batch.", topic="training")
    lora_r: int = option(16, "LoRA rank of the LoRA columns.", topic="training")
    gradient_checkpointing: bool = option(False, "Recompute the trained layers' activations.", topic="training")
    json: bool = option(False, "Print the plan as JSON instead of a table.", topic="output")
    output_dir: str | None = option(None, "Also write the plan there, as plan.md and plan.json.", topic="output")

    def checks(self) -> dict[str, bool]:
        return {
            **super().checks(),
            "gpus": self.gpus >= 1,
            "reserve": 0.0 <= self.reserve < 1.0,
            "batch_size": self.batch_size >= 2,
            "micro_batch_size": self.micro_batch_size >= 1,
            "max_length": self.max_length >= 1,
            "lora_r": self.lora_r >= 1,
        }

    def memory_bytes(self) -> int:
        """--gpu-memory in bytes (a bare number is GiB)."""
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", self.gpu_memory)
        unit = match.group(2).lower() if match else None
        if match is None or unit not in _UNITS:
            raise ConfigError(f"gpu_memory {self.gpu_memory!r} is not a size like 80GB, 24GiB or 40000MB")
        return int(float(match.group(1)) * _UNITS[unit])
