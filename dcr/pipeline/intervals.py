"""95% intervals for the pipeline's rates, discernments and contrasts: a paired bootstrap over prompts and seeds.

Every arm is evaluated on the same prompts with the same seeds, so a contrast X - Y is paired: one bootstrap
draw takes the seeds with replacement and, for every set, its prompts with replacement, the same draw for
both arms (the prompts are the population the finding should hold for; the seeds, the training noise).
The statistic of a draw is the mean over the drawn seeds of the metric on the drawn prompts; the interval is
the 2.5 and 97.5 percentiles over the draws. A rate is the share of a set's prompts that got the expected
behaviour (compliance on a comply set, refusal on a refuse set); discernment adds the rates of a matched
pair of sets (`dcr.evaluation.report.discernment`'s pairs).

Outcomes come from each evaluation's completions.jsonl (one row per prompt, with the judge's verdict) and the
expected behaviour of each set from its results.json.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

# (report name, comply set, refuse set): the matched pairs whose rates discernment adds
PAIRS = (
    ("XSTest", "xstest_safe", "xstest_unsafe"),
    ("JBB", "jailbreakbench_benign", "jailbreakbench_harmful"),
)
DRAWS = 2000

Outcomes = dict[str, dict[str, int]]  # set -> prompt id -> 1 if the expected behaviour, else 0


def load_outcomes(eval_folder: Path) -> Outcomes:
    """Per set and prompt id, whether the response had the set's expected behaviour."""
    results = json.loads((eval_folder / "results.json").read_text())
    refuse = {name for name in results["sets"] if f"{name}_refusal" in results["summary"]}
    out: Outcomes = {}
    with (eval_folder / "completions.jsonl").open(encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            out.setdefault(row["set"], {})[str(row["id"])] = int(bool(row["refusal"]) == (row["set"] in refuse))
    return out


def aligned(groups: Sequence[Sequence[Outcomes]]) -> list[dict[str, np.ndarray]]:
    """For arms given as per-seed outcomes (the same seeds, in the same order), the (seeds, prompts) matrix
    of every set all of them evaluated, over the prompt ids all of them have, in one order for all."""
    everyone = [o for group in groups for o in group]
    if not everyone:
        return [{} for _ in groups]
    names = sorted(set.intersection(*(set(o) for o in everyone)))
    ids = {n: sorted(set.intersection(*(set(o[n]) for o in everyone))) for n in names}
    return [
        {n: np.array([[o[n][i] for i in ids[n]] for o in group], dtype=np.float64) for n in names if ids[n]}
        for group in groups
    ]


def _draw_means(matrix: np.ndarray, seeds: np.ndarray, prompts: np.ndarray) -> np.ndarray:
    """The mean over drawn seeds and prompts of `matrix` for every draw: (draws,)."""
    picked = np.take_along_axis(matrix[seeds], prompts[:, None, :], axis=2)
    return picked.mean(axis=(1, 2))


def bootstrap(
    arms: Sequence[Mapping[str, np.ndarray]], signs: Sequence[float], draws: int = DRAWS, seed: int = 0
) -> dict[str, dict[str, float]]:
    """Point value and 95% interval of sum_a signs[a] * metric(arm a) for every set rate and discernment pair
    that all arms have, resampling seeds and prompts once per draw for all arms alike (paired). Arms hold
    (seeds, prompts) matrices with the same seeds and prompt ids in the same order."""
    rng = np.random.default_rng(seed)
    names = sorted(set.intersection(*(set(a) for a in arms)))
    if not names:
        return {}
    n_seeds = next(iter(arms[0].values())).shape[0]
    seed_draws = rng.integers(0, n_seeds, size=(draws, n_seeds))
    prompt_draws = {n: rng.integers(0, arms[0][n].shape[1], size=(draws, arms[0][n].shape[1])) for n in names}
    rates = {
        n: sum(s * _draw_means(a[n], seed_draws, prompt_draws[n]) for a, s in zip(arms, signs, strict=True))
        for n in names
    }
    points = {n: sum(s * float(a[n].mean()) for a, s in zip(arms, signs, strict=True)) for n in names}
    for label, comply, refuse in PAIRS:
        if comply in rates and refuse in rates:
            rates[f"{label} discernment"] = rates[comply] + rates[refuse]
            points[f"{label} discernment"] = points[comply] + points[refuse]
    return {
        name: {
            "value": points[name],
            "low": float(np.percentile(values, 2.5)),
            "high": float(np.percentile(values, 97.5)),
            "n_prompts": int(arms[0][name].shape[1]) if name in arms[0] else None,
            "n_seeds": n_seeds,
        }
        for name, values in rates.items()
    }


def excludes_zero(interval: Mapping[str, float]) -> bool:
    return interval["low"] > 0 or interval["high"] < 0


def _seed_of(label: str) -> int | None:
    return int(label.rsplit(", seed ", 1)[1]) if ", seed " in label else None


def of_arm(label: str, prefix: str) -> bool:
    """Whether the evaluation ``label`` ("<arm> ..., seed N") is of the arm named by ``prefix``: the prefix
    is the whole arm name or its first words ("(a)" of "(a) alignment only"), never part of a longer name
    ("layer=1" is not "layer=10")."""
    arm = label.rsplit(", seed ", 1)[0]
    return arm == prefix or arm.startswith(prefix + " ")


def interval_tables(
    outcomes: Mapping[str, Outcomes],
    arms: Sequence[tuple[str, str]],
    contrasts: Sequence[tuple[str, str, str]],
    draws: int = DRAWS,
) -> dict[str, dict[str, dict[str, float]]]:
    """Intervals of every arm's rates and discernments and of every contrast, from per-label outcomes
    (labels "<arm prefix> ..., seed N", as the pipeline names its evaluations). Contrasts pair the seeds
    both arms have."""

    def by_seed(prefix: str) -> dict[int, Outcomes]:
        return {
            seed: o for label, o in outcomes.items() if of_arm(label, prefix) and (seed := _seed_of(label)) is not None
        }

    tables: dict[str, dict[str, dict[str, float]]] = {}
    for prefix, _ in arms:
        runs = by_seed(prefix)
        if runs:
            (arm,) = aligned([[runs[s] for s in sorted(runs)]])
            tables[prefix] = bootstrap([arm], [1.0], draws)
    for x, y, _ in contrasts:
        first, second = by_seed(x), by_seed(y)
        seeds = sorted(set(first) & set(second))
        if seeds:
            pair = aligned([[first[s] for s in seeds], [second[s] for s in seeds]])
            tables[f"{x} - {y}"] = bootstrap(pair, [1.0, -1.0], draws)
    return tables


def detectable(tables: Mapping[str, Mapping[str, Mapping[str, float]]], names: Sequence[str]) -> dict[str, float]:
    """Per metric, the difference this run's contrasts would show 4 times in 5: 1.43 times the median
    half-width of their intervals (a true difference of one half-width excludes zero only half the time);
    contrasts of saturated rates (zero width) are left out."""
    out = {}
    for name in names:
        half = [(t[name]["high"] - t[name]["low"]) / 2 for key, t in tables.items() if " - " in key and name in t]
        half = [h for h in half if h > 0]
        if half:
            out[name] = 1.43 * float(np.median(half))
    return out
