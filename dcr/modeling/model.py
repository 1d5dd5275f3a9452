"""Load a causal LM and its tokenizer from a local directory, or the embedded default model.

Only local files are read: a model name that is not an existing folder with a ``config.json`` is an error,
never a hub download.
"""

from __future__ import annotations

from pathlib import Path

import torch

from dcr.modeling.embedded import default_model_dir
from dcr.modeling.runtime import attn_implementation

DEFAULT_MODEL = "default"


def resolve_model_path(name_or_path: str | Path) -> Path:
    """``"default"`` is the embedded SmolLM2-135M-Instruct; anything else must be a local HF model folder."""
    if str(name_or_path) == DEFAULT_MODEL:
        return default_model_dir()
    path = Path(name_or_path).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"model path {path} does not exist (pass a local model folder or 'default')")
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} is not a Hugging Face model folder: it has no config.json")
    return path


def load_model(
    name_or_path: str | Path = DEFAULT_MODEL,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    attention: str = "auto",
):
    """Return ``(model, tokenizer)``; the model is on ``device`` in ``dtype`` with the chosen attention."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = torch.device(device)
    path = resolve_model_path(name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=dtype, attn_implementation=attn_implementation(attention, device), local_files_only=True
    )
    return model.to(device), tokenizer
