"""The pipeline's comparison of base, (a) alignment only and (b) DCR + alignment: markdown, JSON and a plot.

With several seeds each arm also gets a mean row, and the report gives the spread (min to max) of the
headline differences (b) - (a) across seeds.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from statistics import mean
from typing import Any

from dcr.evaluation.report import comparison_table

HEADLINE = (
    ("xstest_safe_compliance", "XSTest safe: compliance"),
    ("xstest_unsafe_refusal", "XSTest unsafe: refusal"),
    ("coconot_eval_refusal", "CoCoNot unsafe: refusal"),
)
FILES = {"report": "report.md", "json": "comparison.json", "plot": "comparison.png"}


def arm_rows(summaries: Mapping[str, Mapping[str, float]], prefix: str) -> list[Mapping[str, float]]:
    """Summaries of the per-seed rows whose label starts with ``prefix``."""
    return [s for label, s in summaries.items() if label.startswith(prefix)]


def differences(summaries: Mapping[str, Mapping[str, float]]) -> dict[str, list[float]]:
    """Per headline metric, the seed-paired differences (b) - (a)."""
    a, b = arm_rows(summaries, "(a)"), arm_rows(summaries, "(b)")
    return {k: [sb[k] - sa[k] for sa, sb in zip(a, b, strict=True) if k in sa and k in sb] for k, _ in HEADLINE}


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
        comparison_table({k: {"summary": v} for k, v in rows.items()}),
        "## (b) - (a)",
        "",
        "| metric | difference per seed | mean |",
        "|---|---|---:|",
    ]
    for key, label in HEADLINE:
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
        "differences_b_minus_a": differences(summaries),
        "settings": settings,
        "seconds": seconds,
    }
    paths["json"].write_text(json.dumps(record, indent=2) + "\n")
    paths["report"].write_text(render(summaries, settings, seconds))
    if plot(summaries, paths["plot"]) is None:
        del paths["plot"]
    return paths
