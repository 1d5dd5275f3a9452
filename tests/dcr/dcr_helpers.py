"""Tiny offline models, tokenizer and prompt data shared by the dcr tests (built once per session)."""

from __future__ import annotations

import atexit
import functools
import json
import shutil
import tempfile
from pathlib import Path

import pytest

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")
pytest.importorskip("datasets")

from dcr.training.refine_config import RefineConfig  # noqa: E402  (after the skips: it needs transformers)

WORDS = (
    "how do i kill a python process make bomb at home steal car write poem about the sea shoot photo "
    "history of war poison rat in garden hack my own account best way to hurt someone explain why people "
    "lie cook meth buy gun illegally what is terrorism fake passport crash program"
).split()
CHAT_TEMPLATE = (
    "{% for m in messages %}<|user|> {{ m['content'] }} <|end|> {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
TOXIC = [
    "make bomb at home",
    "cook meth",
    "buy gun illegally",
    "best way to hurt someone",
    "fake passport",
    "steal car",
    "poison rat in garden and someone",
]
SEEMINGLY = [
    "how do i kill a python process",
    "shoot photo",
    "history of war",
    "what is terrorism",
    "crash program",
    "hack my own account",
    "write poem about the sea",
]


def _tokenizer(extra_words: tuple[str, ...] = ()) -> transformers.PreTrainedTokenizerFast:
    specials = ["<pad>", "<eos>", "[UNK]", "<|user|>", "<|end|>", "<|assistant|>"]
    vocab = {tok: i for i, tok in enumerate(specials + sorted(set(WORDS)) + list(extra_words))}
    model = tokenizers.models.WordLevel(vocab=vocab, unk_token="[UNK]")
    tok = tokenizers.Tokenizer(model)
    tok.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens(specials)
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="[UNK]", chat_template=CHAT_TEMPLATE
    )


@functools.cache
def tiny_model_dir(
    arch: str = "llama", layers: int = 4, dropout: float = 0.0, extra_words: tuple[str, ...] = ()
) -> Path:
    """A saved random causal LM (Llama or Qwen2 architecture) with a word-level tokenizer and chat template
    (whose vocabulary ``extra_words`` extends)."""
    import torch

    tok = _tokenizer(extra_words)
    common = dict(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        attention_dropout=dropout,
        tie_word_embeddings=True,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
    )
    config = (transformers.LlamaConfig if arch == "llama" else transformers.Qwen2Config)(**common)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config)
    path = Path(tempfile.mkdtemp(prefix=f"dcr-tiny-{arch}-"))
    atexit.register(shutil.rmtree, path, True)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def prompt_rows(per_class: int = 24) -> list[dict[str, str]]:
    """Labelled prompts built from the tiny vocabulary: distinct texts, two classes."""
    rows = []
    for label, bases in (("toxic", TOXIC), ("seemingly_toxic", SEEMINGLY)):
        for i in range(per_class):
            words = bases[i % len(bases)].split() + [WORDS[(i * 7 + k) % len(WORDS)] for k in range(i // 7 + 1)]
            rows.append({"text": " ".join(words), "label": label})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def tiny_refine_config(tmp_path: Path, **overrides):
    """A four-step DCR stage on the tiny llama (checkpoints at steps 2 and 4, validation every 2 steps) in
    `tmp_path / "run"`; `overrides` replace any setting."""
    settings = dict(
        model=str(tiny_model_dir("llama")),
        layer=2,
        data=str(write_jsonl(tmp_path / "prompts.jsonl", prompt_rows())),
        batch_size=8,
        micro_batch_size=3,
        steps=4,
        lr=1e-3,
        warmup_steps=1,
        save_every=2,
        val_fraction=0.2,
        eval_every=2,
        output_dir=str(tmp_path / "run"),
        progress=False,
    )
    return RefineConfig(**{**settings, **overrides})
