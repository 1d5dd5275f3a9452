"""Loading real models: the checkpoint's own dtype in, the same dtype out; Hub ids from the local cache
(with a revision), and a clear error naming the cache when one is not there."""

from __future__ import annotations

import shutil

import pytest
import torch
from dcr_helpers import prompt_rows, tiny_model_dir, write_jsonl
from safetensors import safe_open

from dcr.modeling.model import load_model, resolve_model_path
from dcr.training.refine import refine
from dcr.training.refine_config import RefineConfig

transformers = pytest.importorskip("transformers")
huggingface_hub = pytest.importorskip("huggingface_hub")


def _dtypes(folder) -> dict[str, torch.dtype]:
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        return {k: f.get_slice(k).get_dtype() for k in f.keys()}  # noqa: SIM118


def test_bf16_model_in_bf16_model_out_of_the_same_size(tmp_path):
    model, tokenizer = load_model(tiny_model_dir("llama"))
    source = tmp_path / "bf16"
    model.to(torch.bfloat16).save_pretrained(source)
    tokenizer.save_pretrained(source)
    data = write_jsonl(tmp_path / "prompts.jsonl", prompt_rows())
    config = RefineConfig(
        model=str(source), layer=2, data=str(data), batch_size=8, steps=2, lr=1e-3, save_every=0,
        output_dir=str(tmp_path / "run"), progress=False,
    )  # fmt: skip
    out = refine(config)
    assert set(_dtypes(out).values()) == {"BF16"} == set(_dtypes(source).values())
    size_in, size_out = (p.stat().st_size for p in (source / "model.safetensors", out / "model.safetensors"))
    assert abs(size_in - size_out) < 4096  # the same tensors; only the header may differ
    loaded, _ = load_model(out, dtype="auto")
    assert next(loaded.parameters()).dtype == torch.bfloat16


def _cache_snapshot(cache, repo: str, commit: str, ref: str, source) -> None:
    root = cache / f"models--{repo.replace('/', '--')}"
    shutil.copytree(source, root / "snapshots" / commit)
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / ref).write_text(commit)


def test_hub_id_resolves_from_the_local_cache_with_a_revision(tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    _cache_snapshot(cache, "dcr-test/tiny", "a" * 40, "main", tiny_model_dir("llama"))
    _cache_snapshot(cache, "dcr-test/tiny", "b" * 40, "v2", tiny_model_dir("qwen2"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    assert resolve_model_path("dcr-test/tiny").name == "a" * 40
    assert resolve_model_path("dcr-test/tiny", revision="v2").name == "b" * 40
    model, _ = load_model("dcr-test/tiny", revision="v2")
    assert model.config.model_type == "qwen2"


def test_missing_hub_id_names_the_cache_and_the_fix(tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError) as err:
        resolve_model_path("org/not-here")
    message = str(err.value)
    assert str(tmp_path / "empty") in message and "huggingface-cli download org/not-here" in message
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_model_path("./no/such/folder")
