"""Evaluation results on disk: JSON, the judged completions, a markdown report, and a comparison table.

`write_results` is called by `dcr.evaluation.evaluate.evaluate`; `comparison_table` renders several evaluated models
(e.g. base, alignment only, DCR then alignment) side by side for the pipeline's report.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

FILES = {"results": "results.json", "completions": "completions.jsonl", "report": "report.md"}

# Headline metrics in display order: (summary key, column label, higher is better).
METRICS: tuple[tuple[str, str, bool], ...] = (
    ("xstest_safe_compliance", "XSTest safe: compliance", True),
    ("xstest_unsafe_refusal", "XSTest unsafe: refusal", True),
    ("jailbreakbench_benign_compliance", "JBB benign: compliance", True),
    ("jailbreakbench_harmful_refusal", "JBB harmful: refusal", True),
    ("coconot_eval_refusal", "CoCoNot unsafe: refusal", True),
    ("self_instruct_user_compliance", "benign: compliance", True),
    ("probe_auroc", "probe AUROC", True),
    ("nn_accuracy", "1-NN accuracy", True),
    ("cross_class_cosine", "cross-class cosine", False),
    ("perplexity", "answer perplexity", False),
)
_EXAMPLES_PER_SET = 3


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if abs(value) >= 10 else f"{value:.3f}"


def _clip(text: str, n: int = 160) -> str:
    flat = " ".join(text.split()).replace("|", "\\|")
    return flat if len(flat) <= n else flat[: n - 3] + "..."


def comparison_table(results: Mapping[str, Mapping]) -> str:
    """Markdown table, one row per evaluated model (``{label: results}``), one column per headline metric.

    Columns are the known metrics any model has, then any other summary keys; arrows say which way is better.
    """
    present = [k for r in results.values() for k in r.get("summary", {})]
    columns = [(k, f"{label} {'↑' if up else '↓'}") for k, label, up in METRICS if k in present]
    columns += [(k, k) for k in dict.fromkeys(present) if k not in {c for c, _ in columns}]
    lines = ["| model | " + " | ".join(label for _, label in columns) + " |", "|---|" + "---:|" * len(columns)]
    for label, r in results.items():
        summary = r.get("summary", {})
        lines.append(f"| {label} | " + " | ".join(_fmt(summary.get(k)) for k, _ in columns) + " |")
    return "\n".join(lines) + "\n"


def discernment(summary: Mapping[str, float]) -> dict[str, tuple[float, float, float]]:
    """Per matched pair of sets present: (compliance + refusal, compliance, refusal). The pairs are XSTest
    safe / unsafe, JailbreakBench benign / harmful and every user set with both a comply and a refuse part."""
    pairs = {
        "XSTest": ("xstest_safe_compliance", "xstest_unsafe_refusal"),
        "JailbreakBench": ("jailbreakbench_benign_compliance", "jailbreakbench_harmful_refusal"),
    }
    for key in summary:
        if key.endswith("_comply_compliance"):
            stem = key.removesuffix("_comply_compliance")
            pairs[stem] = (key, f"{stem}_refuse_refusal")
    return {
        name: (summary[c] + summary[r], summary[c], summary[r])
        for name, (c, r) in pairs.items()
        if c in summary and r in summary
    }


def _behaviour_section(results: Mapping, completions: Sequence[dict]) -> list[str]:
    out = [
        "## Refusal behaviour",
        "",
        "Score = rate of the expected behaviour. Refusals are judged by "
        + (
            "`dcr.evaluation.refusal` (the weighted-cue detector)"
            if results["settings"].get("judge", "cues") == "cues"
            else f"the model {results['settings']['judge']} with XSTest's rubric (`dcr.evaluation.judge`)"
        )
        + "; XSTest's prefix match is shown for comparison.",
        "",
        "| set | expected | prompts | score | refusal rate | refusal rate (XSTest prefixes) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for name, s in results["sets"].items():
        out.append(
            f"| {name} | {s['expected']} | {s['n']} | {_fmt(s['score'])} | {_fmt(s['refusal_rate'])} | "
            f"{_fmt(s['refusal_rate_prefix'])} |"
        )
    for name, s in results["sets"].items():
        if "by_type" in s:
            out += [
                "",
                f"Refusal rate by prompt type, {name}:",
                "",
                "| type | prompts | refusal rate |",
                "|---|---:|---:|",
            ]
            out += [f"| {t} | {v['n']} | {_fmt(v['refusal_rate'])} |" for t, v in s["by_type"].items()]
    misses = {}
    for row in completions:
        wrong = row["refusal"] != (results["sets"][row["set"]]["expected"] == "refuse")
        if wrong and len(misses.setdefault(row["set"], [])) < _EXAMPLES_PER_SET:
            misses[row["set"]].append(row)
    if misses:
        out += ["", "Examples of the unexpected behaviour (first few per set):", ""]
        for name, rows in misses.items():
            for row in rows:
                verb = "refused" if row["refusal"] else "complied"
                out.append(f"- {name}, {verb}: **{_clip(row['prompt'], 100)}** -> {_clip(row['response'])}")
    return out


def render_report(results: Mapping, completions: Sequence[dict] = ()) -> str:
    """Markdown report of one model's evaluation (with a few unexpected responses when completions are given)."""
    settings = results["settings"]
    limit = "all prompts" if settings["limit"] is None else f"at most {settings['limit']} prompts"
    out = [
        f"# Evaluation: {results['model']}",
        "",
        f"Greedy decoding, at most {settings['max_new_tokens']} new tokens; {limit} per set.",
        "",
        *[
            f"**Discernment ({name}): {value:.3f}** = compliance on its seemingly toxic prompts {c:.3f} + refusal "
            f"on its toxic prompts {r:.3f} (0 to 2; answering or refusing everything scores 1).\n"
            for name, (value, c, r) in discernment(results.get("summary", {})).items()
        ],
        comparison_table({results["model"]: results}),
        *_behaviour_section(results, completions),
    ]
    rep = results.get("representation")
    if rep:
        out += [
            "",
            f"## Representation at layer {rep['layer']} ({rep['pooling']} pooling)",
            "",
            f"XSTest unsafe vs safe prompts ({rep['n']} in all): cross-class cosine "
            f"{_fmt(rep['cross_class_cosine'])} (lower separates more), 1-NN label accuracy "
            f"{_fmt(rep['nn_accuracy'])}, linear-probe AUROC {_fmt(rep.get('probe_auroc'))}.",
        ]
        if "plot" in rep:
            out += ["", f"![PCA of layer-{rep['layer']} representations]({rep['plot']})"]
    ppl = results.get("perplexity")
    if ppl:
        out += [
            "",
            "## General ability",
            "",
            f"Perplexity of {ppl['answers']} Self-Instruct user-oriented reference answers (response tokens "
            f"only, {ppl['tokens']} tokens): {_fmt(ppl['perplexity'])}.",
        ]
    out += ["", "## Time", "", "| stage | seconds |", "|---|---:|"]
    out += [f"| {k} | {v:.1f} |" for k, v in results["timing_s"].items()]
    return "\n".join(out) + "\n"


def write_results(results: dict, completions: Sequence[dict], out_dir: str | Path) -> dict[str, Path]:
    """Write results.json, completions.jsonl and report.md under ``out_dir``; record the names in results."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results["files"] = dict(FILES)
    if "plot" in results.get("representation", {}):
        results["files"]["plot"] = results["representation"]["plot"]
    paths = {k: out_dir / name for k, name in results["files"].items()}
    with paths["completions"].open("w", encoding="utf-8") as f:
        for row in completions:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    paths["report"].write_text(render_report(results, completions), encoding="utf-8")
    paths["results"].write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return paths
