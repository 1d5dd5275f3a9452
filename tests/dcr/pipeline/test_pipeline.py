"""Pipeline wiring on a tiny random model with tiny limits: steps, markers, skip on rerun, report files."""

from __future__ import annotations

import json

import pytest
from dcr_helpers import tiny_model_dir

from dcr.config import ConfigError
from dcr.evaluation.rejudge import rescore
from dcr.pipeline.report import differences
from dcr.pipeline.run import ABLATION, ARMS, MARKER, dcr_overlap, resolve, run_pipeline, run_step, stage_configs

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
    "ablate": {"max_prompts": 4, "max_length": 32},
    "evaluate": {"sets": ["xstest_safe", "xstest_unsafe"], "limit": 2, "max_new_tokens": 3, "batch_size": 2},
}


def test_pipeline_runs_every_step_then_skips_them(tmp_path):
    model = str(tiny_model_dir("llama"))
    messages: list[str] = []
    result = run_pipeline(
        model, tmp_path, "quick", seeds=[0], overrides=TINY, device="cpu", progress=False, log=messages.append
    )
    steps = [
        "base/eval",
        "seed-0/dcr",
        "seed-0/align-only",
        "seed-0/eval-align-only",
        "seed-0/ablate",
        "seed-0/eval-ablate",
        "seed-0/dcr-align",
        "seed-0/eval-dcr-align",
        "seed-0/data-align",
        "seed-0/eval-data-align",
        "seed-0/dcr-data-align",
        "seed-0/eval-dcr-data-align",
    ]
    assert [m.split()[1] for m in messages] == [str(tmp_path / s) for s in steps]
    assert all((tmp_path / s / MARKER).is_file() for s in steps)
    assert set(result["summaries"]) == {"base"} | {f"{arm}, seed 0" for arm in [*ARMS.values(), ABLATION]}
    ablated = json.loads((tmp_path / "seed-0" / "ablate" / MARKER).read_text())["settings"]
    assert ablated["model"] == str(tmp_path / "seed-0" / "align-only" / "model") and ablated["layer"] == 2
    assert ablated["sources"] == ["twins", "self_instruct"]  # the DCR stage's prompts, harmless ones beside them
    assert "output_dir" not in ablated
    arm = {a: json.loads((tmp_path / "seed-0" / a / MARKER).read_text())["settings"] for a in ARMS}
    refined = str(tmp_path / "seed-0" / "dcr" / "model")
    assert arm["dcr-align"]["model"] == arm["dcr-data-align"]["model"] == refined
    assert arm["align-only"]["contrast_share"] is None and arm["data-align"]["contrast_share"] == 0.5

    def differing(x, y):
        return {k for k in arm[x] if k != "output_dir" and arm[x][k] != arm[y][k]}

    assert differing("align-only", "dcr-align") == differing("data-align", "dcr-data-align") == {"model"}
    assert differing("align-only", "data-align") == differing("dcr-align", "dcr-data-align") == {"contrast_share"}
    report = (tmp_path / "report.md").read_text()
    assert "XSTest safe: compliance" in report and "(b) - (a)" in report and "(d) - (c)" in report
    assert "(b) - (e)" in report and "(e) - (a)" in report
    assert "## Intervals (95%, paired bootstrap over prompts and seeds)" in report
    intervals = json.loads((tmp_path / "comparison.json").read_text())["intervals"]
    assert set(intervals) >= {"(a)", "(e)", "(b) - (a)", "(e) - (a)"}
    d = intervals["(b) - (a)"]["XSTest discernment"]
    assert d["low"] <= d["value"] <= d["high"] and d["n_seeds"] == 1
    assert "| xstest_safe | held out | 0.00 |" in report
    assert json.loads((tmp_path / "comparison.json").read_text())["summaries"] == result["summaries"]

    messages.clear()
    again = run_pipeline(
        model, tmp_path, "quick", seeds=[0], overrides=TINY, device="cpu", progress=False, log=messages.append
    )
    assert all(m.startswith("[skip]") for m in messages) and len(messages) == len(steps)
    assert again["summaries"] == result["summaries"]

    changed = {**TINY, "align": {**TINY["align"], "steps": 3}}
    with pytest.raises(ConfigError, match="other settings"):
        run_pipeline(
            model, tmp_path, "quick", seeds=[0], overrides=changed, device="cpu", progress=False, log=messages.append
        )


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
    assert "| XSTest discernment | +0.000, +0.100 (**+0.050**) |" in report


def test_differences_answer_each_question_per_seed():
    rate = "xstest_safe_compliance"
    summaries = {
        "(a) alignment only, seed 0": {rate: 0.5},
        "(b) DCR + alignment, seed 0": {rate: 0.7},
        "(c) alignment with more contrast pairs, seed 0": {rate: 0.6},
        "(d) DCR + (c)'s alignment, seed 0": {rate: 0.9},
        "(a) alignment only, seed 1": {rate: 0.4},
        "(c) alignment with more contrast pairs, seed 1": {rate: 0.8},
    }
    assert differences(summaries, "(b)", "(c)")[rate] == pytest.approx([0.1])  # seed 1 has no (b)
    assert differences(summaries, "(c)", "(a)")[rate] == pytest.approx([0.1, 0.4])
    assert differences(summaries, "(d)", "(c)")[rate] == pytest.approx([0.3])


def test_paper_profile_trains_on_xstest_safe_and_reserves_its_hh_prompts(tmp_path):
    from dcr.prompts.sft_mix import build_mix
    from dcr.prompts.sources import DCR_HH_SOURCE, dcr_hh_prompts
    from dcr.prompts.tables import normalise

    settings = resolve("paper")
    common = {"model": "default", "device": "cpu", "progress": False}
    refine_cfg, align_cfgs = stage_configs(settings, common, tmp_path, 0, 0.5)
    assert refine_cfg.loss == "circle" and refine_cfg.center is False
    assert all(cfg.reserved_sources == [DCR_HH_SOURCE] for cfg in align_cfgs.values())
    seen = dcr_overlap(refine_cfg, settings["evaluate"])
    assert seen["xstest_safe"] == 1.0 and seen["xstest_unsafe"] == 0.0
    held_out = ("jailbreakbench_benign", "jailbreakbench_harmful", "coconot_eval", "self_instruct_user")
    assert all(seen[name] == 0.0 for name in held_out)
    reserved = {normalise(t) for t in dcr_hh_prompts()}
    assert len(reserved) == 500
    mix = build_mix(0.25, seed=0, reserved_sources=[DCR_HH_SOURCE])
    assert not reserved & {normalise(p) for p in mix["prompt"]}
    quick_refine, quick_align = stage_configs(resolve("quick"), common, tmp_path, 0, 0.5)
    assert dcr_overlap(quick_refine, {"sets": ["xstest_safe"]}) == {"xstest_safe": 0.0}
    assert all(cfg.reserved_sources is None for cfg in quick_align.values())


def test_a_new_judge_rejudges_finished_evaluations_without_training_or_generating(tmp_path):
    model, judge = str(tiny_model_dir("llama")), str(tiny_model_dir(extra_words=("1", "2", "3")))
    run_pipeline(model, tmp_path, "quick", seeds=[0], overrides=TINY, device="cpu", progress=False, log=lambda m: None)
    messages: list[str] = []
    # a second judge reads the same completions for the report and changes no evaluation
    before = {p: p.read_text() for p in tmp_path.rglob("results.json")}
    run_pipeline(model, tmp_path, "quick", seeds=[0], overrides=TINY, device="cpu", progress=False, second_judge=judge,
                 log=messages.append)  # fmt: skip
    assert {p: p.read_text() for p in tmp_path.rglob("results.json")} == before
    assert [m for m in messages if not m.startswith("[skip]")] == [f"[judge] every evaluation's completions by {judge}"]
    compared = json.loads((tmp_path / "comparison.json").read_text())["judges"]
    assert compared["first"] == "cues" and compared["second"] == judge and len(compared["rates"]) == 6
    for label, by_set in compared["rates"].items():
        folder = next(p.parent for p in before if json.loads(p.read_text())["model"] == label)
        second, _ = rescore(folder, judge)
        for set_name, cell in by_set.items():
            first = json.loads((folder / "results.json").read_text())["sets"][set_name]["refusal_rate"]
            assert cell["first"] == first and cell["second"] == second["sets"][set_name]["refusal_rate"]
            assert 0.0 <= cell["agreement"] <= 1.0 and cell["n"] == 2
            assert (cell["agreement"] == 1.0) <= (cell["first"] == cell["second"])
    assert "## Refusal rates by two judges" in (tmp_path / "report.md").read_text()
    messages.clear()
    judged = {**TINY, "evaluate": {**TINY["evaluate"], "judge": judge}}
    result = run_pipeline(
        model, tmp_path, "quick", seeds=[0], overrides=judged, device="cpu", progress=False, log=messages.append
    )
    evals = sorted(str(p.parent) for p in tmp_path.rglob("results.json"))
    assert sorted(m.split()[1] for m in messages if m.startswith("[rejudge]")) == evals and len(evals) == 6
    assert not [m for m in messages if m.startswith("[run]")]
    for folder in evals:
        marker = json.loads((tmp_path / folder / MARKER).read_text())
        results = json.loads((tmp_path / folder / "results.json").read_text())
        assert marker["settings"]["judge"] == results["settings"]["judge"] == judge
        assert marker["summary"] == results["summary"]
    assert json.loads((tmp_path / "comparison.json").read_text())["summaries"] == result["summaries"]
    messages.clear()
    run_pipeline(
        model, tmp_path, "quick", seeds=[0], overrides=judged, device="cpu", progress=False, log=messages.append
    )
    assert all(m.startswith("[skip]") for m in messages)
    changed = {**judged, "evaluate": {**judged["evaluate"], "judge": "cues", "limit": 3}}
    with pytest.raises(ConfigError, match="other settings"):
        run_pipeline(
            model, tmp_path, "quick", seeds=[0], overrides=changed, device="cpu", progress=False, log=lambda m: None
        )
