"""--report-to tensorboard writes event files that TensorBoard's own reader parses, with every logged
metric at its step; unknown trackers are refused."""

from __future__ import annotations

import pytest
from dcr_helpers import prompt_rows, tiny_model_dir, write_jsonl

from dcr.cli import main
from dcr.training.jsonl_log import read_log

pytest.importorskip("transformers")
event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")


def test_tensorboard_events_hold_the_metrics_log(tmp_path):
    data = write_jsonl(tmp_path / "prompts.jsonl", prompt_rows())
    run = tmp_path / "run"
    argv = ["refine", "--model", str(tiny_model_dir("llama")), "--layer", "2", "--data", str(data),
            "--batch-size", "8", "--steps", "3", "--save-every", "0", "--eval-every", "1", "--val-fraction", "0.2",
            "--output-dir", str(run), "--no-progress", "--report-to", "tensorboard"]  # fmt: skip
    assert main(argv) == 0
    events = event_accumulator.EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    tags = events.Tags()["scalars"]
    log = read_log(run / "metrics.jsonl")
    train = [r for r in log if "loss" in r]
    assert [e.step for e in events.Scalars("refine/loss")] == [r["step"] for r in train]
    assert [e.value for e in events.Scalars("refine/loss")] == pytest.approx([r["loss"] for r in train], rel=1e-6)
    assert "refine/grad_norm" in tags and "refine/validation/probe_auroc" in tags


def test_unknown_tracker_is_refused(tmp_path, capsys):
    assert main(["refine", "--report-to", "mlflow", "--output-dir", str(tmp_path / "x"), "--print-config"]) == 2
    assert "report_to" in capsys.readouterr().err
