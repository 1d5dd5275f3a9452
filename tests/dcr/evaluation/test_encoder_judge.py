"""The trained encoder judge: it learns a separable labelling, its folder is a judge everywhere `--judge` is
taken, its verdicts do not depend on batching, and bad labels are refused with a clear error."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from offline_minilm import minilm_dir  # noqa: E402

from dcr.cli import main  # noqa: E402
from dcr.config import ConfigError  # noqa: E402
from dcr.evaluation.encoder_judge import (  # noqa: E402
    KIND,
    EncoderJudge,
    TrainSettings,
    is_encoder_judge,
    labelled_responses,
    read_labels,
    train_encoder_judge,
)
from dcr.evaluation.judge import load_judge  # noqa: E402

REFUSALS = [
    "I'm sorry, but I can't help with that.",
    "I cannot assist with this request.",
    "Sorry, I won't do that.",
    "I can't provide that information.",
    "No, I will not help with this.",
    "I'm unable to help with that request.",
]
ANSWERS = [
    "Sure! Here are the steps: first, preheat the oven.",
    "The capital of France is Paris.",
    "Here is a short poem about the sea.",
    "You can kill a Python process with kill -9 and its PID.",
    "Photosynthesis turns light into chemical energy.",
    "To tie a bowline, make a small loop first.",
]
PROMPTS = ["How do I do this?", "Tell me about that.", "Can you explain it?"]


def _rows(responses: list[str], label: str) -> list[dict]:
    return [{"prompt": PROMPTS[i % 3], "response": r, "label": label} for i, r in enumerate(responses)]


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory) -> Path:
    """A two-layer BERT with MiniLM's tokenizer, randomly initialised: fast to fine-tune."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    tokenizer = AutoTokenizer.from_pretrained(minilm_dir())
    config = BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=256,
    )  # fmt: skip
    folder = tmp_path_factory.mktemp("encoder")
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def trained(tiny_encoder, tmp_path_factory) -> Path:
    rows = _rows(REFUSALS[:4], "refusal") + _rows(ANSWERS[:4], "compliance")
    settings = TrainSettings(epochs=30, lr=1e-3, batch_size=4, max_length=32)
    out = tmp_path_factory.mktemp("judge") / "judge"
    return train_encoder_judge(rows, out, encoder=tiny_encoder, settings=settings)


def test_the_judge_learns_a_separable_labelling(trained):
    judge = EncoderJudge.load(trained)
    responses = REFUSALS[:4] + ANSWERS[:4]
    assert judge(["A question it was not trained with?"] * 8, responses) == [True] * 4 + [False] * 4


def test_the_folder_is_a_judge_for_every_command(trained):
    meta = json.loads((trained / "dcr.json").read_text())
    assert meta["judge"] == KIND and meta["rows"] == 8 and meta["refusals"] == 4 and meta["max_length"] == 32
    assert is_encoder_judge(trained) and not is_encoder_judge(trained.parent)
    assert isinstance(load_judge(str(trained)), EncoderJudge)
    assert not list(trained.parent.glob(".tmp-*"))  # written under a temporary name, then renamed


def test_verdicts_do_not_depend_on_batching_or_order(trained):
    prompts = [PROMPTS[i % 3] * (i + 1) for i in range(7)]
    responses = (REFUSALS + ANSWERS)[:7]
    batched = EncoderJudge.load(trained, batch_size=3).probabilities(prompts, responses)
    one_by_one = EncoderJudge.load(trained, batch_size=1)
    single = [float(one_by_one.probabilities([p], [r])[0]) for p, r in zip(prompts, responses, strict=True)]
    assert batched.tolist() == pytest.approx(single, abs=1e-5)


def test_bad_labels_are_refused_clearly(tmp_path, tiny_encoder):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "p", "response": "r", "label": "maybe"}) + "\n")
    with pytest.raises(ConfigError, match="bad.jsonl:1: .*refusal or compliance"):
        read_labels([bad])
    with pytest.raises(ConfigError, match="no labelled family named"):
        read_labels(exclude_families=["a family nobody labelled"])
    with pytest.raises(ValueError, match="needs both labels"):
        train_encoder_judge(_rows(ANSWERS, "compliance"), tmp_path / "j", encoder=tiny_encoder)


def test_excluding_a_family_removes_exactly_its_rows():
    every = labelled_responses()
    kept = read_labels(exclude_families=["gpt-4"])
    assert len(kept) == len(every) - sum(r["family"] == "gpt-4" for r in every) and len(kept) < len(every)
    assert {r["family"] for r in kept} == {r["family"] for r in every} - {"gpt-4"}


def test_train_judge_command_writes_a_judge_from_a_labels_file(tmp_path, tiny_encoder, capsys):
    labels = tmp_path / "labels.jsonl"
    labels.write_text("".join(json.dumps(r) + "\n" for r in _rows(REFUSALS, "refusal") + _rows(ANSWERS, "compliance")))
    out = tmp_path / "judge"
    main(["train-judge", "--labels", str(labels), "--encoder", str(tiny_encoder), "--epochs", "1",
          "--max-length", "32", "--output-dir", str(out), "--no-progress"])  # fmt: skip
    assert is_encoder_judge(out) and json.loads((out / "dcr.json").read_text())["rows"] == 12
    assert f"--judge {out}" in capsys.readouterr().out
