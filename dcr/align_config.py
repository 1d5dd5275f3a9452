"""Settings of the alignment stage (`dcr align`): one flat dataclass, read and overridden like `RefineConfig`.

The file/flag machinery of `dcr.config` (``add_arguments``, ``build``) works on any dataclass whose fields carry
``help`` (and optional ``choices``) metadata, so this stage reuses it unchanged.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from dcr.config import ConfigError
from dcr.sft_data import BENIGN_SOURCES


def _opt(default: Any, help: str, choices: tuple[str, ...] | None = None) -> Any:
    meta = {"help": help, "choices": choices}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class AlignConfig:
    """Everything `dcr align` needs: SFT on benign answers plus refusals, with an optional retention term."""

    model: str = _opt("default", "Model to align: a local Hugging Face causal-LM folder (e.g. the output of "
                      "`dcr refine`), or 'default' for the embedded SmolLM2-135M-Instruct.")
    refusal_share: float = _opt(0.05, "Share of (harmful prompt, refusal) pairs in the mix (the DCR paper: "
                                "about 5 percent).")
    examples: int | None = _opt(None, "Size of the SFT mix. Unset: every shipped benign pair plus the matching "
                                "number of refusal pairs.")
    benign_sources: list[str] = _opt(list(BENIGN_SOURCES), "Shipped benign (prompt, answer) sources.")
    max_length: int = _opt(512, "Longest conversation in tokens; the prompt keeps at most half, the answer is cut.")
    batch_size: int = _opt(16, "Conversations per optimizer step.")
    micro_batch_size: int = _opt(8, "Conversations per forward/backward (gradient accumulation); 0: the whole batch.")
    steps: int = _opt(200, "Optimizer steps.")
    lr: float = _opt(2e-5, "Peak AdamW learning rate.")
    weight_decay: float = _opt(0.0, "AdamW weight decay.")
    schedule: str = _opt("cosine", "Learning-rate schedule after warm-up.", ("cosine", "linear", "constant"))
    warmup_steps: int = _opt(0, "Linear warm-up steps.")
    max_grad_norm: float = _opt(1.0, "Clip the gradient norm to this value; 0 disables clipping.")
    seed: int = _opt(0, "Seed of the mix, the refusal wording, batch order and dropout.")
    retention_weight: float = _opt(0.0, "Weight of the retention term: the contrastive loss at layer l between "
                                   "the mix's refusal prompts and its benign prompts, keeping the separation DCR "
                                   "built; 0 turns it off.")
    retention_layer: int | float | None = _opt(None, "Layer l of the retention term (index or fraction). Unset: "
                                               "the layer recorded in the model's dcr.json, else 0.5.")
    retention_batch_size: int = _opt(16, "Prompts per retention batch, half refusal prompts, half benign ones.")
    pooling: str = _opt("last", "Token states to one vector for the retention term.", ("last", "mean"))
    loss: str = _opt("circle", "Contrastive loss of the retention term.", ("circle", "supcon", "infonce"))
    margin: float = _opt(0.4, "Circle loss relaxation margin m.")
    gamma: float = _opt(80.0, "Circle loss scale gamma.")
    temperature: float = _opt(0.1, "Temperature of supcon and infonce.")
    lora: bool = _opt(False, "Train LoRA adapters on every decoder layer instead of all weights (needs peft); "
                      "they are merged into the saved model.")
    lora_r: int = _opt(16, "LoRA rank.")
    lora_alpha: float = _opt(32.0, "LoRA alpha (scale alpha / r).")
    lora_dropout: float = _opt(0.0, "Dropout on the LoRA input.")
    device: str = _opt("auto", "Device: auto (CUDA if available), cpu, cuda, cuda:1, ...")
    precision: str = _opt("auto", "auto: bf16 autocast on CUDA, fp32 on CPU; or force bf16 / fp32.",
                          ("auto", "bf16", "fp32"))
    attention: str = _opt("auto", "Attention implementation: auto (flash_attention_2 on CUDA when flash-attn "
                          "is installed, else sdpa), sdpa, eager, flash_attention_2.")
    output_dir: str = _opt("runs/align", "Run folder: metrics.jsonl, checkpoints/, and the aligned model in model/.")
    save_every: int = _opt(50, "Write a checkpoint every this many steps; 0: only at the end.")
    keep_checkpoints: int = _opt(2, "How many recent checkpoints to keep; 0 keeps all.")
    resume: bool = _opt(False, "Continue from the newest checkpoint in output_dir (same config required).")
    progress: bool = _opt(True, "Show a progress bar.")

    def validate(self) -> AlignConfig:
        """Raise :class:`ConfigError` for values no run could use; return self."""
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            if choices and getattr(self, f.name) not in choices:
                raise ConfigError(f"{f.name} must be one of {list(choices)}, got {getattr(self, f.name)!r}")
        checks = {
            "refusal_share": 0.0 <= self.refusal_share < 1.0,
            "examples": self.examples is None or self.examples >= 1,
            "max_length": self.max_length >= 8,
            "batch_size": self.batch_size >= 1,
            "micro_batch_size": self.micro_batch_size >= 0,
            "steps": self.steps >= 1,
            "lr": self.lr > 0,
            "weight_decay": self.weight_decay >= 0,
            "warmup_steps": 0 <= self.warmup_steps <= self.steps,
            "max_grad_norm": self.max_grad_norm >= 0,
            "retention_weight": self.retention_weight >= 0,
            "retention_batch_size": self.retention_batch_size >= 4 and self.retention_batch_size % 2 == 0,
            "margin": 0.0 <= self.margin <= 1.0,
            "gamma": self.gamma > 0,
            "temperature": self.temperature > 0,
            "lora_r": self.lora_r >= 1,
            "save_every": self.save_every >= 0,
            "keep_checkpoints": self.keep_checkpoints >= 0,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ConfigError("invalid value(s): " + ", ".join(f"{n}={getattr(self, n)!r}" for n in bad))
        if self.retention_weight > 0 and self.refusal_share == 0:
            raise ConfigError("the retention term needs refusal pairs: set refusal_share above 0")
        return self
