"""The pipeline's comparison of base, (a) alignment only and (b) DCR + alignment: markdown, JSON and a plot.

The report leads with discernment: compliance on the seemingly toxic prompts plus refusal on the toxic
ones of a matched pair of sets (0 to 2; 1 is what answering everything, or refusing everything, scores),
with its parts, per model and seed, and each arm's mean and spread across seeds, so that a stage that
merely lowers every refusal is not mistaken for one that discerns. With several seeds each arm also gets a
mean row, and the report gives the spread of the headline differences (b) - (a) across seeds.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from statistics import mean
from typing import Any

from dcr.evaluation.report import comparison_table, discernment

HEADLINE = (
    ("xstest_safe_compliance", "XSTest safe: compliance"),
    ("xstest_unsafe_refusal", "XSTest unsafe: refusal"),
    ("coconot_eval_refusal", "CoCoNot unsafe: refusal"),
)
FILES = {"report": "report.md", "json": "comparison.json", "plot": "comparison.png"}
ARMS = (("(a)", "(a) alignment only"), ("(b)", "(b) DCR + alignment"))


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


def differences(summaries: Mapping[str, Mapping[str, float]]) -> dict[str, list[float]]:
    """Per headline metric (XSTest discernment first), the seed-paired differences (b) - (a)."""
    a, b = arm_rows(summaries, "(a)"), arm_rows(summaries, "(b)")
    out = {
        "xstest_discernment": [
            discernment(sb)["XSTest"][0] - discernment(sa)["XSTest"][0]
            for sa, sb in zip(a, b, strict=True)
            if "XSTest" in discernment(sa) and "XSTest" in discernment(sb)
        ]
    }
    return out | {k: [sb[k] - sa[k] for sa, sb in zip(a, b, strict=True) if k in sa and k in sb] for k, _ in HEADLINE}


def _with_means(summaries: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, float]]:
    rows = {k: dict(v) for k, v in summaries.items()}
    for prefix, label in (("(a)", "(a) alignment only, mean"), ("(b)", "(b) DCR + alignment, mean")):
        group = arm_rows(summaries, prefix)
        if len(group) > 1:
            rows[label] = {k: mean(s[k] for s in group) for k in group[0] if all(k in s for s in group)}
    return rows


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


def render(summaries: Mapping[str, Mapping[str, float]], settings: Mapping[str, Any], seconds: float) -> str:
    """Markdown: the comparison table, the (b) - (a) differences, the settings and the wall-clock time."""
    rows = _with_means(summaries)
    lines = [
        "# DCR pipeline: base vs (a) alignment only vs (b) DCR + alignment",
        "",
        *_discernment_section(summaries),
        "## Every metric",
        "",
        comparison_table({k: {"summary": v} for k, v in rows.items()}),
        "## (b) - (a)",
        "",
        "| metric | difference per seed | mean |",
        "|---|---|---:|",
    ]
    for key, label in (("xstest_discernment", "XSTest discernment"), *HEADLINE):
        diffs = differences(summaries).get(key, [])
        if diffs:
            lines.append(f"| {label} | {', '.join(f'{d:+.3f}' for d in diffs)} | {mean(diffs):+.3f} |")
    lines += [
        "",
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
    out: Path, summaries: Mapping[str, Mapping[str, float]], settings: Mapping[str, Any], *, seconds: float
) -> dict[str, Path]:
    """Write report.md, comparison.json and comparison.png under ``out``; return their paths."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {k: out / v for k, v in FILES.items()}
    record = {
        "summaries": summaries,
        "discernment": {label: discernment(s) for label, s in summaries.items()},
        "differences_b_minus_a": differences(summaries),
        "settings": settings,
        "seconds": seconds,
    }
    paths["json"].write_text(json.dumps(record, indent=2) + "\n")
    paths["report"].write_text(render(summaries, settings, seconds))
    if plot(summaries, paths["plot"]) is None:
        del paths["plot"]
    return paths
