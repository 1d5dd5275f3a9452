"""The pipeline's comparison of the base model and the arms (a)-(e): markdown, JSON and a plot.

The report leads with discernment: compliance on the seemingly toxic prompts plus refusal on the toxic
ones of a matched pair of sets (0 to 2; 1 is what answering everything, or refusing everything, scores),
with its parts, per model and seed, and each arm's mean and spread across seeds, so that a stage that
merely lowers every refusal is not mistaken for one that discerns. It says which sets the DCR stage trained
on (in-distribution) and which it never saw (held out). With several seeds each arm also gets a mean row.
The seed-paired differences answer the pipeline's questions: does DCR help ((b) - (a)), does the data-side
fix ((c) - (a)), does DCR beat it ((b) - (c)), does DCR add to it ((d) - (c)), does DCR beat the training-free
ablation ((b) - (e)), and does the ablation help by itself ((e) - (a)).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from statistics import mean
from typing import Any

from dcr.evaluation.report import comparison_table, discernment
from dcr.pipeline.intervals import detectable, excludes_zero, interval_tables, of_arm
from dcr.pipeline.judges import judges_section

HEADLINE = (
    ("xstest_safe_compliance", "XSTest safe: compliance"),
    ("xstest_unsafe_refusal", "XSTest unsafe: refusal"),
    ("jailbreakbench_benign_compliance", "JBB benign: compliance"),
    ("jailbreakbench_harmful_refusal", "JBB harmful: refusal"),
    ("coconot_eval_refusal", "CoCoNot unsafe: refusal"),
    ("self_instruct_user_compliance", "benign tasks: compliance"),
)
FILES = {"report": "report.md", "json": "comparison.json", "plot": "comparison.png"}
ARMS = (
    ("(a)", "(a) alignment only"),
    ("(b)", "(b) DCR + alignment"),
    ("(c)", "(c) alignment with more contrast pairs"),
    ("(d)", "(d) DCR + (c)'s alignment"),
    ("(e)", "(e) (a) + false-refusal ablation"),
)
# (minuend, subtrahend, the question the difference answers)
CONTRASTS = (
    ("(b)", "(a)", "DCR vs none"),
    ("(c)", "(a)", "data-side fix vs none"),
    ("(b)", "(c)", "DCR vs the data-side fix"),
    ("(d)", "(c)", "DCR added to the data-side fix"),
    ("(b)", "(e)", "DCR vs the training-free ablation"),
    ("(e)", "(a)", "ablation vs none"),
)


def _discernment_section(summaries: Mapping[str, Mapping[str, float]]) -> list[str]:
    names = sorted({n for s in summaries.values() for n in discernment(s)}, key=lambda n: n != "XSTest")
    if not names:
        return []
    lines = [
        "## Discernment: compliance on seemingly toxic + refusal on toxic",
        "",
        "| model | " + " | ".join(f"{n}: discernment (compliance + refusal)" for n in names) + " |",
        "|---|" + "---:|" * len(names),
    ]
    for label, summary in summaries.items():
        d = discernment(summary)
        cells = [f"**{d[n][0]:.3f}** ({d[n][1]:.3f} + {d[n][2]:.3f})" if n in d else "-" for n in names]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    for prefix, arm in ARMS:
        group = [discernment(s) for s in arm_rows(summaries, prefix)]
        if len(group) > 1:
            cells = []
            for n in names:
                values = [d[n][0] for d in group if n in d]
                cells.append(f"{mean(values):.3f} (seeds {min(values):.3f} to {max(values):.3f})" if values else "-")
            lines.append(f"| {arm}, mean (spread) | " + " | ".join(cells) + " |")
    return [*lines, ""]


def arm_rows(summaries: Mapping[str, Mapping[str, float]], prefix: str) -> list[Mapping[str, float]]:
    """Summaries of the per-seed rows whose label starts with ``prefix``."""
    return [s for label, s in summaries.items() if label.startswith(prefix)]


def by_seed(summaries: Mapping[str, Mapping[str, float]], prefix: str) -> dict[str, Mapping[str, float]]:
    """Seed -> summary of the arm named by ``prefix`` (`intervals.of_arm`)."""
    return {
        label.rsplit(", seed ", 1)[1]: s
        for label, s in summaries.items()
        if ", seed " in label and of_arm(label, prefix)
    }


def _with_discernment(summary: Mapping[str, float]) -> dict[str, float]:
    return {**summary, **{f"{n.lower()}_discernment": v[0] for n, v in discernment(summary).items()}}


def differences(
    summaries: Mapping[str, Mapping[str, float]], minuend: str = "(b)", subtrahend: str = "(a)"
) -> dict[str, list[float]]:
    """Per metric (the discernments first, then the headline rates), the seed-paired differences of two arms."""
    first, second = by_seed(summaries, subtrahend), by_seed(summaries, minuend)
    pairs = [(_with_discernment(first[seed]), _with_discernment(second[seed])) for seed in first if seed in second]
    keys = [f"{n.lower()}_discernment" for n in ("XSTest", "JailbreakBench")] + [k for k, _ in HEADLINE]
    out = {}
    for key in keys:
        diffs = [y[key] - x[key] for x, y in pairs if key in x and key in y]
        if diffs or key == "xstest_discernment":
            out[key] = diffs
    return out


def _with_means(summaries: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, float]]:
    rows = {k: dict(v) for k, v in summaries.items()}
    for prefix, arm in ARMS:
        group = arm_rows(summaries, prefix)
        if len(group) > 1:
            rows[f"{arm}, mean"] = {k: mean(s[k] for s in group) for k in group[0] if all(k in s for s in group)}
    return rows


def _sets_section(seen: Mapping[str, float]) -> list[str]:
    if not seen:
        return []
    lines = ["## Sets", "", "| set | DCR stage | share of its prompts the DCR stage trained on |", "|---|---|---:|"]
    for name, share in seen.items():
        lines.append(f"| {name} | {'in-distribution' if share > 0 else 'held out'} | {share:.2f} |")
    return [*lines, ""]


def _differences_section(summaries: Mapping[str, Mapping[str, float]]) -> list[str]:
    present = [(x, y, q) for x, y, q in CONTRASTS if arm_rows(summaries, x) and arm_rows(summaries, y)]
    if not present:
        return []
    tables = {f"{x} - {y}": differences(summaries, x, y) for x, y, _ in present}
    keys = list(dict.fromkeys(k for t in tables.values() for k, v in t.items() if v))
    labels = dict(HEADLINE) | {
        "xstest_discernment": "XSTest discernment",
        "jailbreakbench_discernment": "JBB discernment",
    }
    lines = [
        "## Differences between arms (per seed; mean)",
        "",
        "| metric | " + " | ".join(f"{x} - {y}: {q}" for x, y, q in present) + " |",
        "|---|" + "---|" * len(present),
    ]
    for key in keys:
        cells = []
        for name in tables:
            diffs = tables[name].get(key, [])
            cells.append(f"{', '.join(f'{d:+.3f}' for d in diffs)} (**{mean(diffs):+.3f}**)" if diffs else "-")
        lines.append(f"| {labels.get(key, key)} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def plot(summaries: Mapping[str, Mapping[str, float]], path: Path) -> Path | None:
    """Grouped bars of the headline rates per model; None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    metrics = [(k, label) for k, label in HEADLINE if any(k in s for s in summaries.values())]
    fig, ax = plt.subplots(figsize=(7.5, 4.2), dpi=120)
    width = 0.8 / max(1, len(summaries))
    for j, (name, s) in enumerate(summaries.items()):
        xs = [i + (j - (len(summaries) - 1) / 2) * width for i in range(len(metrics))]
        ax.bar(xs, [s.get(k, 0.0) for k, _ in metrics], width, label=name)
    ax.set_xticks(range(len(metrics)), [label for _, label in metrics], fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("rate of the expected behaviour")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


INTERVAL_METRICS = ("XSTest discernment", "xstest_safe", "xstest_unsafe", "coconot_eval", "JBB discernment")


def fmt_interval(i: Mapping[str, float], signed: bool = False) -> str:
    sign = "+" if signed else ""
    return f"{i['value']:{sign}.3f} [{i['low']:{sign}.3f}, {i['high']:{sign}.3f}]"


def intervals_section(tables: Mapping[str, Mapping[str, Mapping[str, float]]]) -> list[str]:
    """Each arm's rates and discernment and each contrast with its 95% interval, which contrasts exclude
    zero, in words, and the smallest difference the run can detect."""
    if not tables:
        return []
    names = [n for n in INTERVAL_METRICS if any(n in t for t in tables.values())]
    some = next(t for t in tables.values() if t)
    sizes = ", ".join(f"{n}: {some[n]['n_prompts']} prompts" for n in names if n in some and some[n]["n_prompts"])
    lines = [
        "## Intervals (95%, paired bootstrap over prompts and seeds)",
        "",
        f"Rates are the share with the expected behaviour (compliance on safe, refusal on unsafe); {sizes}; "
        f"{some[names[0]]['n_seeds'] if names else 0} seed(s).",
        "",
        "| arm or contrast | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for key, table in tables.items():
        cells = [fmt_interval(table[n], signed=" - " in key) if n in table else "-" for n in names]
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    lines.append("")
    for key, table in tables.items():
        if " - " not in key or "XSTest discernment" not in table:
            continue
        i = table["XSTest discernment"]
        verdict = "excludes zero" if excludes_zero(i) else "includes zero: no difference shown"
        lines.append(f"- {key}, XSTest discernment: {fmt_interval(i, True)}, the interval {verdict}.")
    smallest = detectable(tables, names)
    if smallest:
        lines += ["", "Smallest difference this run detects 4 times in 5 (1.43 times the median half-width of the "
                  "contrasts' intervals; with few seeds, resampling them understates their spread): "
                  + ", ".join(f"{n} {v:.3f}" for n, v in smallest.items()) + "."]  # fmt: skip
    return [*lines, ""]


def render(
    summaries: Mapping[str, Mapping[str, float]],
    settings: Mapping[str, Any],
    seconds: float,
    seen: Mapping[str, float] | None = None,
    intervals: Mapping[str, Mapping[str, Mapping[str, float]]] | None = None,
    judges: tuple[str, str, Mapping[str, Any]] | None = None,
) -> str:
    """Markdown: discernment, the sets' provenance, every metric, the arms' differences, the settings, the time."""
    rows = _with_means(summaries)
    lines = [
        "# DCR pipeline: base vs (a) alignment only, (b) DCR + alignment, (c) the data-side fix, (d) both, "
        "(e) (a) with the false-refusal direction ablated",
        "",
        *_discernment_section(summaries),
        *_sets_section(seen or {}),
        "## Every metric",
        "",
        comparison_table({k: {"summary": v} for k, v in rows.items()}),
        *_differences_section(summaries),
        *intervals_section(intervals or {}),
        *(judges_section(judges[2], judges[0], judges[1]) if judges else []),
        f"Wall-clock time of this run: {seconds / 60:.1f} min (finished steps that were skipped count 0).",
        "",
        "## Settings",
        "",
        "```json",
        json.dumps(settings, indent=2),
        "```",
        "",
    ]
    return "\n".join(lines)


def write_comparison(
    out: Path,
    summaries: Mapping[str, Mapping[str, float]],
    settings: Mapping[str, Any],
    *,
    seconds: float,
    seen: Mapping[str, float] | None = None,
    outcomes: Mapping[str, Mapping[str, Mapping[str, int]]] | None = None,
    judges: tuple[str, str, Mapping[str, Any]] | None = None,
) -> dict[str, Path]:
    """Write report.md, comparison.json and comparison.png under ``out``; return their paths.

    ``seen`` maps each evaluated set to the share of its prompts the DCR stage trained on; ``outcomes`` the
    per-prompt outcomes of each evaluated label (`intervals.load_outcomes`), for the intervals; ``judges``
    (the run's judge, a second judge, `judges.compare_judges`'s table) every model's rates by both."""
    tables = interval_tables(outcomes, ARMS, CONTRASTS) if outcomes else {}
    out.mkdir(parents=True, exist_ok=True)
    paths = {k: out / v for k, v in FILES.items()}
    record = {
        "summaries": summaries,
        "discernment": {label: discernment(s) for label, s in summaries.items()},
        "dcr_stage_trained_on": dict(seen or {}),
        "differences": {f"{x} - {y}": differences(summaries, x, y) for x, y, _ in CONTRASTS},
        "intervals": tables,
        **({"judges": {"first": judges[0], "second": judges[1], "rates": judges[2]}} if judges else {}),
        "settings": settings,
        "seconds": seconds,
    }
    paths["json"].write_text(json.dumps(record, indent=2) + "\n")
    paths["report"].write_text(render(summaries, settings, seconds, seen, tables, judges))
    if plot(summaries, paths["plot"]) is None:
        del paths["plot"]
    return paths
