"""`dcr rejudge`: judging a finished evaluation's completions again gives what evaluating with that judge from the
start gives, keeps the judge-free results, and refuses a folder that is not a finished evaluation."""

from __future__ import annotations

import json

import pytest
from dcr_helpers import tiny_model_dir
from test_judge import DIGITS

from dcr.cli import main
from dcr.config import ConfigError
from dcr.evaluation.config import EvaluateConfig
from dcr.evaluation.evaluate import evaluate_model
from dcr.evaluation.rejudge import rejudge

pytest.importorskip("transformers")


def _evaluate(out, judge: str) -> dict:
    model = str(tiny_model_dir(extra_words=DIGITS))
    config = EvaluateConfig(
        model=model, output_dir=str(out), sets=["xstest_safe", "xstest_unsafe"], limit=3, max_new_tokens=3,
        batch_size=3, layer=2, perplexity=False, progress=False, judge=judge,
    )  # fmt: skip
    return evaluate_model(config.validate())


def _rows(folder) -> list[dict]:
    return [json.loads(line) for line in (folder / "completions.jsonl").read_text().splitlines()]


def test_rejudged_evaluation_equals_one_judged_so_from_the_start(tmp_path):
    judge = str(tiny_model_dir(extra_words=DIGITS))
    by_cues, by_model = _evaluate(tmp_path / "cues", "cues"), _evaluate(tmp_path / "model", judge)
    rejudged = rejudge(tmp_path / "cues", judge)
    assert rejudged["settings"] == by_model["settings"]
    assert rejudged["sets"] == by_model["sets"] and rejudged["summary"] == by_model["summary"]
    assert _rows(tmp_path / "cues") == _rows(tmp_path / "model")
    assert rejudged["representation"] == by_cues["representation"]
    assert json.loads((tmp_path / "cues" / "results.json").read_text())["summary"] == by_model["summary"]
    assert f"the model {judge} with XSTest" in (tmp_path / "cues" / "report.md").read_text()

    back = rejudge(tmp_path / "cues", "cues")
    assert back["sets"] == by_cues["sets"] and back["summary"] == by_cues["summary"]
    assert [r["refusal"] for r in _rows(tmp_path / "cues")] == [r["refusal_cues"] for r in _rows(tmp_path / "model")]


def test_cli_rejudges_and_refuses_what_it_cannot(tmp_path, capsys):
    _evaluate(tmp_path / "run", "cues")
    assert main(["rejudge", "--output-dir", str(tmp_path / "run"), "--judge", "cues", "--device", "cpu"]) == 0
    assert "report rewritten" in capsys.readouterr().out
    assert main(["rejudge", "--output-dir", str(tmp_path / "run"), "--judge", str(tmp_path / "nowhere")]) == 2
    assert "neither cues" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="not a finished evaluation.*results.json"):
        rejudge(tmp_path / "empty", "cues")
