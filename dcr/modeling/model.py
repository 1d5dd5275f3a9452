"""Load a causal LM and its tokenizer: a local folder, a Hub id already in the local Hugging Face cache,
or the embedded default model.

Only local files are read, never a download: a Hub id (``Qwen/Qwen2.5-1.5B-Instruct``, optionally at a
``revision``) resolves offline from the cache (``HF_HUB_CACHE`` / ``HF_HOME``), and one that is not there
is an error naming the cache and how to fill it.
"""

from __future__ import annotations

from pathlib import Path

import torch
from huggingface_hub import constants, snapshot_download
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from dcr.config import ConfigError
from dcr.modeling.default_model import default_model_dir
from dcr.modeling.layer_states import resolve_layer
from dcr.modeling.runtime import attn_implementation, warn_if_slow_bf16

DEFAULT_MODEL = "default"


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "auto": "auto"}


def _looks_like_hub_id(name: str) -> bool:
    return not name.startswith((".", "/", "~")) and name.count("/") <= 1 and "\\" not in name


def _from_cache(repo_id: str, revision: str | None) -> Path:
    try:
        return Path(snapshot_download(repo_id, revision=revision, local_files_only=True))
    except Exception as err:  # not cached (or an invalid id): huggingface_hub raises several kinds
        raise FileNotFoundError(
            f"model {repo_id!r} (revision {revision or 'main'}) is neither a local folder nor in the Hugging Face "
            f"cache {constants.HF_HUB_CACHE}; nothing is downloaded at run time: fetch it once where there is "
            f"network (`huggingface-cli download {repo_id}`) and copy the cache here, point HF_HUB_CACHE or "
            "HF_HOME at a cache that has it, or pass a local model folder"
        ) from err


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model")


def resolve_model_path(name_or_path: str | Path, revision: str | None = None) -> Path:
    """``"default"`` is the embedded SmolLM2-135M-Instruct; an existing folder is used as it is; a Hub id
    resolves from the local Hugging Face cache (at ``revision``, default main)."""
    if str(name_or_path) == DEFAULT_MODEL:
        return default_model_dir()
    path = Path(name_or_path).expanduser()
    if not path.is_dir() and _looks_like_hub_id(str(name_or_path)):
        path = _from_cache(str(name_or_path), revision)
    if not path.is_dir():
        raise FileNotFoundError(f"model path {path} does not exist (pass a local model folder or 'default')")
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} is not a Hugging Face model folder: it has no config.json")
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise FileNotFoundError(
            f"{path} has no tokenizer (none of {', '.join(TOKENIZER_FILES)}); save the model's tokenizer there "
            "with tokenizer.save_pretrained(folder)"
        )
    return path


def load_model(
    name_or_path: str | Path = DEFAULT_MODEL,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | str = torch.float32,
    attention: str = "auto",
    revision: str | None = None,
):
    """Return ``(model, tokenizer)``; the model is on ``device`` in ``dtype`` (a torch dtype, a name of
    `DTYPES`, or "auto": the checkpoint's own) with the chosen attention."""
    device = torch.device(device)
    dtype = DTYPES[dtype] if isinstance(dtype, str) else dtype
    warn_if_slow_bf16(device, dtype)
    path = resolve_model_path(name_or_path, revision)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=dtype, attn_implementation=attn_implementation(attention, device), local_files_only=True
    )
    return model.to(device), tokenizer


def model_depth(name_or_path: str | Path = DEFAULT_MODEL, revision: str | None = None) -> int:
    """Number of decoder layers, read from the model folder's config.json without loading any weights."""
    config = AutoConfig.from_pretrained(resolve_model_path(name_or_path, revision), local_files_only=True)
    return int(config.get_text_config().num_hidden_layers)


def layer_before_load(setting: int | float, name_or_path: str | Path, revision: str | None = None) -> int:
    """``setting`` (an index 1..depth or a fraction of the depth) as a layer count of the named model, checked
    against the depth in its config.json, so that a bad --layer stops a run before the model loads."""
    try:
        return resolve_layer(setting, model_depth(name_or_path, revision))
    except ValueError as err:
        raise ConfigError(str(err)) from None
