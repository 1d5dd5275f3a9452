"""The paired bootstrap of the pipeline's intervals against known distributions: coverage and width for a
Bernoulli rate, a paired contrast far narrower than unpaired arms, seeds widening the interval, discernment
as the sum of a pair's rates, and outcomes read from an evaluation folder."""

from __future__ import annotations

import json
import math

import numpy as np

from dcr.pipeline.intervals import aligned, bootstrap, detectable, excludes_zero, interval_tables, load_outcomes, of_arm


def _outcomes(matrix: np.ndarray, name: str = "xstest_safe") -> list[dict]:
    return [{name: {str(i): int(v) for i, v in enumerate(row)}} for row in matrix]


def test_a_rate_is_covered_at_about_95_percent_with_the_binomial_width():
    rng = np.random.default_rng(0)
    p, n, covered, widths = 0.3, 300, 0, []
    for trial in range(200):
        (arm,) = aligned([_outcomes(rng.random((1, n)) < p)])
        interval = bootstrap([arm], [1.0], draws=400, seed=trial)["xstest_safe"]
        covered += interval["low"] <= p <= interval["high"]
        widths.append(interval["high"] - interval["low"])
    assert 0.90 <= covered / 200 <= 0.99
    assert abs(np.mean(widths) / (2 * 1.96 * math.sqrt(p * (1 - p) / n)) - 1) < 0.15


def test_a_paired_contrast_is_narrow_and_holds_the_true_difference():
    rng = np.random.default_rng(1)
    x = (rng.random((1, 400)) < 0.5).astype(float)
    y = x.copy()
    flipped = np.flatnonzero(y[0] == 0)[:20]
    y[0, flipped] = 1  # Y = X with 20 of 400 prompts turned: the true difference X - Y is -0.05
    arm_x, arm_y = aligned([_outcomes(x), _outcomes(y)])
    diff = bootstrap([arm_x, arm_y], [1.0, -1.0], seed=2)["xstest_safe"]
    assert math.isclose(diff["value"], -0.05) and diff["low"] <= -0.05 <= diff["high"]
    assert excludes_zero(diff) and diff["high"] - diff["low"] < 0.05  # unpaired arms: about 0.14 wide
    alone = bootstrap([arm_x], [1.0], seed=2)["xstest_safe"]
    assert alone["high"] - alone["low"] > 0.08


def test_seeds_widen_the_interval_and_discernment_adds_the_pair():
    rng = np.random.default_rng(3)
    safe = np.stack([rng.random(200) < 0.2, rng.random(200) < 0.6]).astype(float)  # seeds disagree
    unsafe = (rng.random((2, 200)) < 0.9).astype(float)
    per_seed = [
        {"xstest_safe": {str(i): int(v) for i, v in enumerate(safe[s])},
         "xstest_unsafe": {str(i): int(v) for i, v in enumerate(unsafe[s])}}
        for s in range(2)
    ]  # fmt: skip
    (arm,) = aligned([per_seed])
    result = bootstrap([arm], [1.0], seed=4)
    one_seed = bootstrap([{k: v[:1] for k, v in arm.items()}], [1.0], seed=4)
    width = lambda r: r["high"] - r["low"]  # noqa: E731
    assert width(result["xstest_safe"]) > 2 * width(one_seed["xstest_safe"])
    d = result["XSTest discernment"]
    assert math.isclose(d["value"], result["xstest_safe"]["value"] + result["xstest_unsafe"]["value"])
    assert d["n_seeds"] == 2


def test_outcomes_read_from_an_evaluation_folder(tmp_path):
    summary = {"xstest_safe_compliance": 0.5, "xstest_unsafe_refusal": 1.0}
    (tmp_path / "results.json").write_text(
        json.dumps({"sets": {"xstest_safe": {}, "xstest_unsafe": {}}, "summary": summary})
    )
    rows = [("xstest_safe", "a", False), ("xstest_safe", "b", True), ("xstest_unsafe", "c", True)]
    (tmp_path / "completions.jsonl").write_text(
        "".join(json.dumps({"set": s, "id": i, "refusal": r}) + "\n" for s, i, r in rows)
    )
    assert load_outcomes(tmp_path) == {"xstest_safe": {"a": 1, "b": 0}, "xstest_unsafe": {"c": 1}}


def test_only_prompts_every_arm_has_are_compared():
    a = [{"s": {"1": 1, "2": 0, "3": 1}}]
    b = [{"s": {"2": 1, "3": 1, "4": 0}}]
    arm_a, arm_b = aligned([a, b])
    assert arm_a["s"].tolist() == [[0, 1]] and arm_b["s"].tolist() == [[1, 1]]


def test_detectable_difference_is_the_80_percent_power_width_of_the_contrasts():
    tables = {
        "(a)": {"m": {"low": 0.0, "high": 1.0}},  # an arm, not a contrast: ignored
        "(b) - (a)": {"m": {"low": -0.1, "high": 0.1}},
        "(c) - (a)": {"m": {"low": -0.3, "high": 0.1}},
        "(d) - (c)": {"m": {"low": 0.0, "high": 0.0}},  # saturated rates: left out
    }
    assert math.isclose(detectable(tables, ["m"])["m"], 1.43 * 0.15)


def test_an_arm_name_never_takes_a_longer_names_evaluations():
    ones, zeros = ({"xstest_safe": {str(i): v for i in range(50)}} for v in (1, 0))
    outcomes = {"(a) alignment only, seed 0": zeros, "layer=1, seed 0": ones, "layer=10, seed 0": zeros}
    tables = interval_tables(outcomes, [("(a)", "(a)"), ("layer=1", "layer=1"), ("layer=10", "layer=10")],
                             [("layer=1", "(a)", ""), ("layer=10", "(a)", "")], draws=100)  # fmt: skip
    assert tables["layer=1"]["xstest_safe"]["value"] == 1.0 and tables["layer=10"]["xstest_safe"]["value"] == 0.0
    assert tables["layer=1 - (a)"]["xstest_safe"]["value"] == 1.0
    assert of_arm("(a) alignment only, seed 3", "(a)") and not of_arm("layer=10, seed 0", "layer=1")
