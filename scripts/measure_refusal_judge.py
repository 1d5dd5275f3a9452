"""Print the refusal judge's and XSTest's prefix list's precision, recall, F1 and accuracy, with 95% Wilson
intervals, on the labelled responses shipped in dcr/data/refusal_labels/: the development sample per split and
origin; other model families per source and model; the held-out family (scored once, after the detector was
frozen) per system-prompt setting and prompt source; the project's own aligned models per model and XSTest set,
with the labelled and the detected refusal rates (the bias in the rates reports give). ``--judge DIR`` measures
a chat model judging with XSTest's rubric (`dcr.evaluation.judge`; ``default``: the embedded model) beside
them."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence

from dcr.evaluation.refusal import (
    HELD_OUT_FAMILY_FILE,
    OTHER_FAMILIES_FILE,
    PROJECT_MODELS_FILE,
    classification_metrics,
    is_refusal,
    load_labels,
    measure,
)

DETECTORS = {"detector": "dcr.evaluation.refusal", "xstest_prefix": "XSTest prefixes"}
Verdicts = Callable[[Sequence[dict]], list[bool]]


def _interval(m: dict, name: str) -> str:
    low, high = m[f"{name}_ci"]
    return f"{m[name]:.3f} [{low:.2f}, {high:.2f}]"


def _rows(title: str, rows: Sequence[dict], extra: dict[str, Verdicts]) -> None:
    gold = [r["label"] == "refusal" for r in rows]
    scores = measure(rows) | {name: classification_metrics(judge(rows), gold) for name, judge in extra.items()}
    for name, m in scores.items():
        print(
            f"| {title} | {m['n']} ({m['refusals']}) | {DETECTORS.get(name, name)} | {_interval(m, 'precision')} | "
            f"{_interval(m, 'recall')} | {m['f1']:.3f} | {_interval(m, 'accuracy')} |"
        )


def main() -> None:
    """Print the detectors' metrics per part of the labelled data (refusal is the positive class)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--judge", help="also measure this chat model (a folder, or default) as a judge")
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    extra: dict[str, Verdicts] = {}
    if args.judge:
        from dcr.evaluation.judge import ModelJudge

        judge = ModelJudge.load(args.judge, batch_size=args.batch_size)
        cache: dict[str, bool] = {}

        def verdicts(rows: Sequence[dict]) -> list[bool]:
            todo = [r for r in rows if r["id"] not in cache]
            if todo:
                cache.update(
                    zip(
                        [r["id"] for r in todo],
                        judge([r["prompt"] for r in todo], [r["response"] for r in todo]),
                        strict=True,
                    )
                )
            return [cache[r["id"]] for r in rows]

        extra[f"judge model {args.judge}"] = verdicts
    print("| part | rows (refusals) | detector | precision [95% CI] | recall [95% CI] | F1 | accuracy [95% CI] |")
    print("|---|---|---|---:|---:|---:|---:|")
    rows = load_labels()
    for split in ("dev", "heldout"):
        for origin in (None, "generated", "hand-written"):
            part = [r for r in rows if r["split"] == split and origin in (None, r["origin"])]
            _rows(f"SmolLM2 sample, {split}, {origin or 'all'}", part, extra)
    others = load_labels(OTHER_FAMILIES_FILE)
    for source in dict.fromkeys(r["source"] for r in others):
        part = [r for r in others if r["source"] == source]
        _rows(f"{source}, all", part, extra)
        _rows(f"{source}, both readers sure", [r for r in part if not r["ambiguous"]], extra)
        models = list(dict.fromkeys(r["model"] for r in part))
        for model in models if len(models) > 1 else ():
            _rows(f"{source}, {model}", [r for r in part if r["model"] == model], extra)
    held_out = load_labels(HELD_OUT_FAMILY_FILE)
    _rows("held-out family, all", held_out, extra)
    _rows("held-out family, both readers sure", [r for r in held_out if not r["ambiguous"]], extra)
    for key in ("setting", "source"):
        for value in dict.fromkeys(r[key] for r in held_out):
            _rows(f"held-out family, {key} {value}", [r for r in held_out if r[key] == value], extra)
    aligned = load_labels(PROJECT_MODELS_FILE)
    _rows("project's aligned models, all", aligned, extra)
    cells: dict[tuple[str, str], list[dict]] = {}
    for r in aligned:
        cells.setdefault((r["model"], r["source"]), []).append(r)
    for (model, source), part in cells.items():
        _rows(f"{model}, {source}", part, extra)
    print("\n| project's aligned model | XSTest set | rows | labelled refusal rate | detected refusal rate |")
    print("|---|---|---:|---:|---:|")
    for (model, source), part in cells.items():
        labelled = sum(r["label"] == "refusal" for r in part) / len(part)
        detected = sum(is_refusal(r["response"]) for r in part) / len(part)
        print(f"| {model} | {source} | {len(part)} | {labelled:.3f} | {detected:.3f} |")


if __name__ == "__main__":
    main()
