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

from torch import nn


def save_refined(model: nn.Module, tokenizer, path: Path, meta: dict[str, Any], merge: bool = True) -> Path:
    """Write ``model`` (merged if it carries LoRA adapters and ``merge``), ``tokenizer`` and ``dcr.json``."""
    if merge and hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{path.name}-", dir=path.parent))
    tmp.chmod(0o755)
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "dcr.json").write_text(json.dumps(meta, indent=2))
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path
