"""Save the refined model as a plain Hugging Face model folder (safetensors) that ``from_pretrained`` loads.

LoRA adapters are merged first (unless asked not to: then the folder is a peft adapter folder, loaded with
`peft.PeftModel.from_pretrained(base_model, folder)`). The folder is written under a temporary name
and renamed into place. ``dcr.json`` beside the weights records the layer, pooling and classes, which the
later stages need to read the same representation.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn


def save_refined(
    model: nn.Module,
    tokenizer,
    path: Path,
    meta: dict[str, Any],
    merge: bool = True,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write ``model`` (merged if it carries LoRA adapters and ``merge``), ``tokenizer`` and ``dcr.json``.

    ``state_dict``: the weights to write instead of the model's own (a sharded model's, gathered)."""
    if merge and hasattr(model, "merge_and_unload"):
        if state_dict is None:
            model = model.merge_and_unload()
        else:
            state_dict = merged_lora_state(model, state_dict)
            model = model.get_base_model()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{path.name}-", dir=path.parent))
    tmp.chmod(0o755)
    try:
        model.save_pretrained(tmp, safe_serialization=True, state_dict=state_dict)
        tokenizer.save_pretrained(tmp)
        (tmp / "dcr.json").write_text(json.dumps(meta, indent=2))
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def merged_lora_state(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The base model's weights with every LoRA adapter of the peft ``model`` merged in, from its state dict
    ``state``: W + scale * B A for each adapted linear layer (what `merge_and_unload` computes in place)."""
    unsupported = [k for k in state if "lora_magnitude_vector" in k or "lora_embedding" in k]
    adapters = {name: m for name, m in model.named_modules() if hasattr(m, "lora_A")}
    if unsupported or any(set(m.lora_A) != {"default"} or m.fan_in_fan_out for m in adapters.values()):
        raise ValueError(
            "merging a gathered LoRA state supports linear adapters named 'default' without DoRA or "
            "fan_in_fan_out (what dcr adds); save the adapters with --no-lora-merge instead"
        )
    scales = {name: m.scaling["default"] for name, m in adapters.items()}
    merged = {}
    for key, tensor in state.items():
        if ".lora_" in key:
            continue
        name = key.removeprefix("base_model.model.")
        if ".base_layer." in key:
            module = key.split(".base_layer.")[0]
            name = name.replace(".base_layer.", ".")
            if key.endswith(".base_layer.weight"):
                a, b = state[f"{module}.lora_A.default.weight"], state[f"{module}.lora_B.default.weight"]
                tensor = (tensor.float() + scales[module] * (b.float() @ a.float())).to(tensor.dtype)
        merged[name] = tensor
    return merged
