"""Pipeline wiring on a tiny random model with tiny limits: steps, markers, skip on rerun, report files."""

from __future__ import annotations

import json

import pytest
from dcr_helpers import tiny_model_dir

from dcr.config import ConfigError
from dcr.pipeline.report import differences
from dcr.pipeline.run import MARKER, run_pipeline, run_step

pytest.importorskip("transformers")

TINY = {
    "refine": {
        "layer": 2,
        "batch_size": 8,
        "micro_batch_size": 4,
        "steps": 2,
        "warmup_steps": 1,
        "lr": 1e-3,
        "max_length": 32,
    },
    "align": {
        "examples": 24,
        "refusal_share": 0.25,
        "steps": 2,
        "warmup_steps": 1,
        "batch_size": 4,
        "micro_batch_size": 4,
        "max_length": 32,
        "lr": 1e-3,
    },
    "evaluate": {"sets": ["xstest_safe", "xstest_unsafe"], "limit": 2, "max_new_tokens": 3, "batch_size": 2},
}


def test_pipeline_runs_every_step_then_skips_them(tmp_path):
    model = str(tiny_model_dir("llama"))
    messages: list[str] = []
    result = run_pipeline(model, tmp_path, "quick", overrides=TINY, device="cpu", progress=False, log=messages.append)
    steps = [
        "base/eval",
        "seed-0/dcr",
        "seed-0/align-only",
        "seed-0/eval-align-only",
        "seed-0/dcr-align",
        "seed-0/eval-dcr-align",
    ]
    assert [m.split()[1] for m in messages] == [str(tmp_path / s) for s in steps]
    assert all((tmp_path / s / MARKER).is_file() for s in steps)
    assert set(result["summaries"]) == {"base", "(a) alignment only, seed 0", "(b) DCR + alignment, seed 0"}
    dcr_align = json.loads((tmp_path / "seed-0" / "dcr-align" / MARKER).read_text())
    assert dcr_align["settings"]["model"] == str(tmp_path / "seed-0" / "dcr" / "model")
    align_only = json.loads((tmp_path / "seed-0" / "align-only" / MARKER).read_text())
    same = {k for k in align_only["settings"] if k != "model"}
    assert all(align_only["settings"][k] == dcr_align["settings"][k] for k in same), "arms differ only in the model"
    report = (tmp_path / "report.md").read_text()
    assert "XSTest safe: compliance" in report and "(b) - (a)" in report
    assert json.loads((tmp_path / "comparison.json").read_text())["summaries"] == result["summaries"]

    messages.clear()
    again = run_pipeline(model, tmp_path, "quick", overrides=TINY, device="cpu", progress=False, log=messages.append)
    assert all(m.startswith("[skip]") for m in messages) and len(messages) == len(steps)
    assert again["summaries"] == result["summaries"]

    changed = {**TINY, "align": {**TINY["align"], "steps": 3}}
    with pytest.raises(ConfigError, match="other settings"):
        run_pipeline(model, tmp_path, "quick", overrides=changed, device="cpu", progress=False, log=messages.append)


def test_unfinished_step_runs_again_and_marker_is_written_last(tmp_path):
    calls = []

    def work():
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("interrupted")
        return {"value": 1}

    with pytest.raises(RuntimeError):
        run_step(tmp_path / "s", {"a": 1}, work, log=lambda m: None)
    assert not (tmp_path / "s" / MARKER).exists()
    assert run_step(tmp_path / "s", {"a": 1}, work, log=lambda m: None)["value"] == 1
    assert run_step(tmp_path / "s", {"a": 1}, work, log=lambda m: None)["value"] == 1
    assert len(calls) == 2


def test_differences_pair_seeds():
    summaries = {
        "base": {"xstest_safe_compliance": 0.5},
        "(a) alignment only, seed 0": {"xstest_safe_compliance": 0.5},
        "(b) DCR + alignment, seed 0": {"xstest_safe_compliance": 0.7},
        "(a) alignment only, seed 1": {"xstest_safe_compliance": 0.6},
        "(b) DCR + alignment, seed 1": {"xstest_safe_compliance": 0.6},
    }
    assert differences(summaries)["xstest_safe_compliance"] == pytest.approx([0.2, 0.0])


@pytest.mark.parametrize("name", ["pipeline_full_lora.yaml", "pipeline_quick_paper_share.yaml"])
def test_shipped_pipeline_configs_are_valid(name):
    from pathlib import Path

    from dcr.config import from_mapping, read_file
    from dcr.pipeline.run import resolve
    from dcr.training.align_config import AlignConfig
    from dcr.training.refine_config import RefineConfig

    overrides = read_file(Path(__file__).resolve().parents[3] / "configs" / name)
    for profile in ("quick", "full"):
        settings = resolve(profile, overrides)
        from_mapping(RefineConfig, settings["refine"]).validate()
        from_mapping(AlignConfig, settings["align"]).validate()


def test_cli_errors_exit_with_status_2(tmp_path, capsys):
    from dcr.cli import main

    bad = tmp_path / "bad.yaml"
    bad.write_text("steps: 3\n")
    assert main(["pipeline", "--config", str(bad), "--output-dir", str(tmp_path / "run")]) == 2
    assert "unknown setting(s) ['steps']" in capsys.readouterr().err
    bad.write_text("align:\n  stepz: 3\n")
    argv = [
        "pipeline",
        "--config",
        str(bad),
        "--model",
        str(tiny_model_dir("llama")),
        "--output-dir",
        str(tmp_path / "run"),
        "--no-progress",
    ]
    assert main(argv) == 2
    assert "stepz" in capsys.readouterr().err


def test_reports_lead_with_discernment_and_its_spread_across_seeds():
    from dcr.evaluation.report import discernment
    from dcr.pipeline.report import differences, render

    a = {"xstest_safe_compliance": 0.6, "xstest_unsafe_refusal": 0.7, "mine_comply_compliance": 0.5,
         "mine_refuse_refusal": 0.9, "coconot_eval_refusal": 0.5}  # fmt: skip
    b = {**a, "xstest_safe_compliance": 0.8, "xstest_unsafe_refusal": 0.5}  # refuses less everywhere
    d = discernment(a)
    assert d["XSTest"] == pytest.approx((1.3, 0.6, 0.7)) and d["mine"] == pytest.approx((1.4, 0.5, 0.9))
    assert "coconot" not in " ".join(d)  # a refusal-only set has no discernment
    b1 = {**b, "xstest_unsafe_refusal": 0.6}
    summaries = {"base": a, "(a) alignment only, seed 0": a, "(b) DCR + alignment, seed 0": b,
                 "(a) alignment only, seed 1": a, "(b) DCR + alignment, seed 1": b1}  # fmt: skip
    # (b) raises compliance only by refusing less: its XSTest discernment does not move, whatever compliance does
    assert differences(summaries)["xstest_discernment"] == pytest.approx([0.0, 0.1])
    report = render(summaries, {}, 60.0)
    first = report.index("## ")
    assert report[first:].startswith("## Discernment")
    assert "(b) DCR + alignment, mean (spread) | 1.350 (seeds 1.300 to 1.400)" in report
    assert "| XSTest discernment | +0.000, +0.100 | +0.050 |" in report
