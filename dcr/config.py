"""Settings of the DCR stage: one flat dataclass, read from YAML/JSON, overridden by command-line flags.

Every field carries its help text, so the CLI builds one documented flag per field
(:func:`add_arguments`) and other stages can reuse the same machinery for their own dataclasses.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A configuration value or file is invalid."""


def _opt(default: Any, help: str, choices: tuple[str, ...] | None = None) -> Any:
    meta = {"help": help, "choices": choices}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class RefineConfig:
    """Everything `dcr refine` needs; defaults reproduce the documented DCR stage on the embedded model."""

    model: str = _opt(
        "default",
        "Model to refine: a local Hugging Face causal-LM folder, or 'default' for the "
        "embedded SmolLM2-135M-Instruct (converted once into the user cache).",
    )
    layer: int | float = _opt(
        0.5,
        "Layer l whose hidden state is refined: an index 1..depth (integer) or a "
        "fraction of the depth (a number with a point, e.g. 0.5). Layers above l are "
        "frozen and not even computed.",
    )
    pooling: str = _opt(
        "last",
        "Token states to one vector: 'last' (the last prompt token, which predicts "
        "the first response token) or 'mean' (masked mean over the prompt).",
        ("last", "mean"),
    )
    chat_template: bool = _opt(
        True, "Render each prompt as a user turn through the tokenizer's chat template with the generation prompt."
    )
    max_length: int = _opt(512, "Longest prompt in tokens; longer prompts are cut from the left.")
    data: str | None = _opt(
        None,
        "Training prompts: a CSV/JSONL/JSON/Parquet file or a `datasets` folder with a "
        "text and a label column. Unset: the prompt sets shipped with dcr.",
    )
    text_column: str = _opt("text", "Column of the data holding the prompt text.")
    label_column: str = _opt("label", "Column of the data holding the class label.")
    classes: list[str] | None = _opt(
        None,
        "Class labels to train on, in class-id order. Default: "
        "seemingly_toxic toxic for the shipped data (add benign for a third class), "
        "every label value for a user file. Rows of other labels are dropped.",
    )
    sources: list[str] | None = _opt(
        None,
        "Shipped sources to use (advbench harmbench jailbreakbench strongreject "
        "simple_safety_tests coconot self_instruct twins). Default: all but twins, the generated "
        "matched pairs (see dcr/data/twins/SOURCE.md).",
    )
    val_fraction: float = _opt(0.1, "Share of prompts held out for validation (fixed hash of the text).")
    loss: str = _opt(
        "circle",
        "Contrastive loss from dcr_kernels: circle (as in the DCR paper), supcon, or "
        "infonce (positive = another prompt of the same class).",
        ("circle", "supcon", "infonce"),
    )
    margin: float = _opt(0.4, "Circle loss relaxation margin m.")
    gamma: float = _opt(80.0, "Circle loss scale gamma.")
    temperature: float = _opt(0.1, "Temperature of supcon and infonce.")
    center: bool = _opt(
        False,
        "Subtract the contrastive batch's mean representation before the loss, so it separates the classes "
        "instead of shrinking the direction all hidden states share.",
    )
    batch_size: int = _opt(64, "Prompts per contrastive batch, the same number from every class.")
    micro_batch_size: int = _opt(
        16,
        "Gradient caching: embed the contrastive batch in micro-batches of this "
        "size, so memory does not grow with batch_size; 0 turns caching off.",
    )
    steps: int = _opt(100, "Optimizer steps.")
    lr: float = _opt(1e-5, "Peak AdamW learning rate.")
    weight_decay: float = _opt(0.0, "AdamW weight decay.")
    schedule: str = _opt("cosine", "Learning-rate schedule after warm-up.", ("cosine", "linear", "constant"))
    warmup_steps: int = _opt(0, "Linear warm-up steps.")
    max_grad_norm: float = _opt(1.0, "Clip the gradient norm to this value; 0 disables clipping.")
    seed: int = _opt(0, "Seed of initialisation, batch sampling and dropout.")
    lora: bool = _opt(
        False,
        "Train LoRA adapters (needs peft) instead of the full layers below l; they are merged into the saved model.",
    )
    lora_r: int = _opt(16, "LoRA rank.")
    lora_alpha: float = _opt(32.0, "LoRA alpha (scale alpha / r).")
    lora_dropout: float = _opt(0.0, "Dropout on the LoRA input.")
    lora_target_modules: list[str] | None = _opt(
        None, "Linear layers that get adapters, by short name (e.g. q_proj v_proj). Default: all linear layers below l."
    )
    train_embeddings: bool = _opt(False, "Also train the input embeddings (refused when they are tied to the LM head).")
    device: str = _opt("auto", "Device: auto (CUDA if available), cpu, cuda, cuda:1, ...")
    precision: str = _opt(
        "auto", "auto: bf16 autocast on CUDA, fp32 on CPU; or force bf16 / fp32.", ("auto", "bf16", "fp32")
    )
    attention: str = _opt(
        "auto",
        "Attention implementation: auto (flash_attention_2 on CUDA when flash-attn "
        "is installed, else sdpa), sdpa, eager, flash_attention_2.",
    )
    output_dir: str = _opt("runs/dcr", "Run folder: metrics.jsonl, checkpoints/, and the refined model in model/.")
    save_every: int = _opt(50, "Write a checkpoint every this many steps; 0: only at the end.")
    keep_checkpoints: int = _opt(2, "How many recent checkpoints to keep; 0 keeps all.")
    resume: bool = _opt(False, "Continue from the newest checkpoint in output_dir (same config required).")
    eval_every: int = _opt(
        0,
        "Log validation separation (1-NN accuracy, cross-class cosine, probe AUROC) "
        "every this many steps and at the end; 0: only at the end.",
    )
    progress: bool = _opt(True, "Show a progress bar.")

    def validate(self) -> RefineConfig:
        """Raise :class:`ConfigError` for values no run could use; return self."""
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            if choices and getattr(self, f.name) not in choices:
                raise ConfigError(f"{f.name} must be one of {list(choices)}, got {getattr(self, f.name)!r}")
        checks = {
            "max_length": self.max_length >= 1,
            "val_fraction": 0.0 <= self.val_fraction < 1.0,
            "margin": 0.0 <= self.margin <= 1.0,
            "gamma": self.gamma > 0,
            "temperature": self.temperature > 0,
            "batch_size": self.batch_size >= 4,
            "micro_batch_size": self.micro_batch_size >= 0,
            "steps": self.steps >= 1,
            "lr": self.lr > 0,
            "weight_decay": self.weight_decay >= 0,
            "warmup_steps": 0 <= self.warmup_steps <= self.steps,
            "max_grad_norm": self.max_grad_norm >= 0,
            "lora_r": self.lora_r >= 1,
            "save_every": self.save_every >= 0,
            "keep_checkpoints": self.keep_checkpoints >= 0,
            "eval_every": self.eval_every >= 0,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ConfigError("invalid value(s): " + ", ".join(f"{n}={getattr(self, n)!r}" for n in bad))
        if isinstance(self.layer, float) and not 0.0 < self.layer <= 1.0:
            raise ConfigError(f"layer as a fraction must be in (0, 1], got {self.layer}")
        if isinstance(self.layer, int) and self.layer < 1:
            raise ConfigError(f"layer as an index must be at least 1, got {self.layer}")
        if self.lora and self.train_embeddings:
            raise ConfigError("lora and train_embeddings cannot be combined")
        return self


def _kind(tp: Any) -> str:
    """Coarse type of a field annotation: bool, int, float, str, list or layer (int | float)."""
    args = {a for a in typing.get_args(tp) if a is not type(None)}
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        if args == {int, float}:
            return "layer"
        (tp,) = args
    if typing.get_origin(tp) is list:
        return "list"
    return {bool: "bool", int: "int", float: "float", str: "str"}[tp]


def _coerce(cls: type, name: str, value: Any) -> Any:
    """Check and convert one value (from a file or a flag) to the field's type."""
    hints = typing.get_type_hints(cls)
    kind = _kind(hints[name])
    optional = type(None) in typing.get_args(hints[name])
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{name} may not be empty")
    try:
        if kind == "bool":
            if isinstance(value, str) and value.lower() in ("true", "yes", "1", "false", "no", "0"):
                return value.lower() in ("true", "yes", "1")
            if not isinstance(value, bool):
                raise TypeError
            return value
        if kind == "int":
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise TypeError
            return int(value)
        if kind == "float":
            if isinstance(value, bool):
                raise TypeError
            return float(value)
        if kind == "layer":
            if isinstance(value, str):
                return float(value) if any(c in value for c in ".eE") else int(value)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError
            return value
        if kind == "list":
            items = value.split(",") if isinstance(value, str) else value
            if not isinstance(items, (list, tuple)):
                raise TypeError
            return [str(x).strip() for x in items if str(x).strip()] or None
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise TypeError
        return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: cannot use {value!r} as {kind}") from None


def from_mapping(cls: type, values: dict[str, Any]) -> Any:
    """Build ``cls`` from a mapping, rejecting unknown keys and converting values to the field types."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"unknown setting(s) {unknown}; valid settings: {sorted(names)}")
    return cls(**{k: _coerce(cls, k, v) for k, v in values.items()})


def read_file(path: str | Path) -> dict[str, Any]:
    """Settings from a YAML (.yaml/.yml) or JSON file, as a mapping."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    text = path.read_text()
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError as err:
            raise ConfigError("YAML configs need pyyaml (pip install pyyaml), or use a JSON file") from err
        try:
            values = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise ConfigError(f"{path} is not valid YAML: {err}") from None
    elif path.suffix.lower() == ".json":
        try:
            values = json.loads(text)
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path} is not valid JSON: {err}") from None
    else:
        raise ConfigError(f"config file {path} must end in .yaml, .yml or .json")
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(f"{path} must hold a mapping of setting: value")
    return values


def add_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """One ``--flag`` per field of ``cls``, documented with the field's help, choices and default."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        kind = _kind(hints[f.name])
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        help_text = f.metadata["help"] + ("" if default is None else f" (default: {default})")
        common = dict(dest=f.name, default=argparse.SUPPRESS, help=help_text)
        if kind == "bool":
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **common)
        elif kind == "list":
            parser.add_argument(flag, nargs="+", metavar="NAME", **common)
        else:
            metavar = "L" if kind == "layer" else kind.upper()
            choices = f.metadata.get("choices")
            parser.add_argument(flag, type=str, metavar="{" + ",".join(choices) + "}" if choices else metavar, **common)


def build(cls: type, config_file: str | Path | None, overrides: dict[str, Any]) -> Any:
    """Defaults, then the config file, then explicit overrides; validated."""
    values = read_file(config_file) if config_file else {}
    values.update(overrides)
    config = from_mapping(cls, values)
    return config.validate() if hasattr(config, "validate") else config
