"""Every evaluated model's refusal rates under a second judge beside the run's own, from the completions the
evaluations already wrote (no generation): how much a reading depends on the judge.

The pipeline adds this section when ``second_judge`` is set (for example the fine-tuned encoder of
`dcr train-judge`); `compare_judges` also reads any finished run folder.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch

from dcr.evaluation.rejudge import rescore
from dcr.evaluation.report import FILES


def compare_judges(
    folders: Mapping[str, Path], judge: str, *, device: str | torch.device = "cpu"
) -> dict[str, dict[str, dict[str, float]]]:
    """label -> set -> {"first": the run's refusal rate, "second": ``judge``'s, "agreement": the share of
    responses both judges call alike, "n": responses} for each evaluation folder."""
    table = {}
    for label, folder in folders.items():
        with (Path(folder) / FILES["completions"]).open(encoding="utf-8") as f:
            first = {(c["set"], c["id"]): c["refusal"] for c in map(json.loads, f) if c}
        results, rows = rescore(folder, judge, device=device)
        table[label] = {}
        for set_name, rates in results["sets"].items():
            mine = [r for r in rows if r["set"] == set_name]
            table[label][set_name] = {
                "first": sum(first[(set_name, r["id"])] for r in mine) / len(mine),
                "second": rates["refusal_rate"],
                "agreement": sum(first[(set_name, r["id"])] == r["refusal"] for r in mine) / len(mine),
                "n": len(mine),
            }
    return table


def judges_section(table: Mapping[str, Mapping[str, Mapping[str, float]]], first: str, second: str) -> list[str]:
    """Markdown: per model and set, the refusal rate by the run's judge / by the second judge (agreement)."""
    if not table:
        return []
    sets = list(next(iter(table.values())))
    lines = [
        "## Refusal rates by two judges",
        "",
        f"Refusal rate by `{first}` / by `{second}` (share of responses they judge alike), from the same completions.",
        "",
        "| model | " + " | ".join(sets) + " |",
        "|---|" + "---:|" * len(sets),
    ]
    for label, by_set in table.items():
        cells = [f"{c['first']:.3f} / {c['second']:.3f} ({c['agreement']:.2f})" for c in map(by_set.get, sets) if c]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return [*lines, ""]
