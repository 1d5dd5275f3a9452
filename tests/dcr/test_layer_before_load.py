"""A --layer beyond the model's depth stops `refine`, `align`, `evaluate` and `ablate` before any weights load:
the depth is read from the model folder's config.json."""

from __future__ import annotations

import pytest
from dcr_helpers import prompt_rows, tiny_model_dir, write_jsonl

from dcr.ablation import ablate
from dcr.cli import main
from dcr.evaluation import evaluate
from dcr.modeling.model import model_depth
from dcr.training import align, refine


def _never_loads(*args, **kwargs):
    raise AssertionError("the model was loaded before --layer was checked")


def test_depth_comes_from_the_config_file():
    assert model_depth(tiny_model_dir("llama")) == 4


@pytest.mark.parametrize(
    ("command", "module", "flags"),
    [
        ("refine", refine, ["--layer", "7", "--steps", "1", "--batch-size", "4"]),
        ("align", align, ["--retention-layer", "7", "--retention-weight", "1", "--steps", "1"]),
        ("evaluate", evaluate, ["--layer", "7", "--sets", "xstest_safe", "--limit", "2"]),
        ("ablate", ablate, ["--layer", "7"]),
    ],
)
def test_bad_layer_is_refused_before_the_model_loads(command, module, flags, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(module, "load_model", _never_loads)
    argv = [command, "--model", str(tiny_model_dir("llama")), "--output-dir", str(tmp_path / "out"), "--device", "cpu"]
    if command == "refine":
        argv += ["--data", str(write_jsonl(tmp_path / "data.jsonl", prompt_rows(4)))]
    assert main([*argv, *flags]) == 2
    assert "layer index must be in [1, 4]" in capsys.readouterr().err
