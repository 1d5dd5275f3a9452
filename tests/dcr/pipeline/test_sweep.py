"""`dcr sweep` on a tiny random model: one setting varied at a time, a pipeline's arms (a) and (b) reused, the
variants' stages run with the varied setting, and the report's rows and paired intervals."""

from __future__ import annotations

import json

import pytest
from dcr_helpers import tiny_model_dir
from test_pipeline import TINY

from dcr.config import ConfigError
from dcr.pipeline.config import SweepConfig
from dcr.pipeline.run import MARKER, run_pipeline
from dcr.pipeline.sweep import run_sweep, variants

pytest.importorskip("transformers")


def test_variants_change_one_setting_and_leave_out_the_profiles():
    refine = {"layer": 0.5, "loss": "circle", "sources": ["twins"]}
    got = variants(refine, {"layer": [0.25, 0.5, 0.75], "loss": ["circle", "supcon"], "sources": [["twins"], None]})
    assert got == {
        "layer=0.25": {"layer": 0.25},
        "layer=0.75": {"layer": 0.75},
        "loss=supcon": {"loss": "supcon"},
        "sources=public sets": {"sources": None},
    }
    with pytest.raises(ConfigError, match="list of values"):
        variants(refine, {"loss": "supcon"})
    with pytest.raises(ConfigError, match="list of sources"):
        variants(refine, {"sources": ["twins"]})
    with pytest.raises(ConfigError, match="no second judge"):
        SweepConfig(second_judge="judges/encoder").validate()
    SweepConfig(ablate={"coefficient": 0.5}, data_side={"contrast_share": 0.4}).validate()  # a pipeline's file


def test_sweep_reuses_the_pipelines_arms_and_runs_each_variant(tmp_path):
    model = str(tiny_model_dir("llama"))
    run_pipeline(model, tmp_path, "quick", seeds=[0], overrides=TINY, device="cpu", progress=False, log=lambda m: None)
    messages: list[str] = []
    vary = {"loss": ["supcon"], "layer": [1]}
    result = run_sweep(model, tmp_path, "quick", vary=vary, seeds=[0], overrides=TINY, device="cpu", progress=False,
                       log=messages.append)  # fmt: skip
    seed = tmp_path / "seed-0"
    for step in ("align-only", "eval-align-only", "dcr", "dcr-align", "eval-dcr-align"):
        assert f"[skip] {seed / step} (finished)" in messages
    assert sum(m.startswith("[run]") for m in messages) == 6  # two variants: DCR stage, alignment, evaluation

    def settings(variant: str, step: str) -> dict:
        return json.loads((tmp_path / "sweep" / variant / "seed-0" / step / MARKER).read_text())["settings"]

    assert settings("loss-supcon", "dcr")["loss"] == "supcon" and settings("loss-supcon", "dcr")["layer"] == 2
    assert settings("layer-1", "dcr")["layer"] == 1 and settings("layer-1", "dcr")["loss"] == "circle"
    assert settings("layer-1", "dcr-align")["retention_layer"] == 1
    assert settings("layer-1", "dcr-align")["model"] == str(tmp_path / "sweep" / "layer-1" / "seed-0" / "dcr" / "model")
    assert settings("layer-1", "eval-dcr-align")["layer"] == 2  # every arm evaluated at the profile's layer

    record = json.loads(result["paths"]["json"].read_text())
    assert set(record["per_seed"]) == {"(a)", "(b)", "loss=supcon", "layer=1"}
    assert set(record["dcr_stage_trained_on"]) == {"(b)", "loss=supcon", "layer=1"}  # (a) has no DCR stage
    assert record["dcr_stage_trained_on"]["(b)"] == {"xstest_safe": 0.0, "xstest_unsafe": 0.0}
    for key in ("(b) - (a)", "loss=supcon - (a)", "loss=supcon - (b)", "layer=1 - (b)"):
        interval = record["intervals"][key]["XSTest discernment"]
        assert interval["low"] <= interval["value"] <= interval["high"]
    labels = [k for k in result["summaries"] if k.startswith("loss=supcon")]
    summary = result["summaries"][labels[0]]
    expected = summary["xstest_safe_compliance"] + summary["xstest_unsafe_refusal"]
    assert record["per_seed"]["loss=supcon"]["0"] == pytest.approx(expected)
    report = result["paths"]["report"].read_text()
    assert "| loss=supcon | " in report and "| (a) alignment only | " in report
    assert "## Intervals (95%, paired bootstrap over prompts and seeds)" in report
