"""Extract the shipped prompt files in dcr/data/ from the licence-clean raw sources.

Run once by maintainers (``python scripts/build_prompts.py /path/to/shared/data``); the package itself only reads
the compact JSONL files this writes, never the raw sources. Each output folder gets the source's SOURCE.md
and LICENSE copied beside it so the attribution travels with the data.
"""

from __future__ import annotations

import argparse
import csv
from collections.abc import Callable, Iterator
from pathlib import Path

from extract import read_jsonl, write_extract

from dcr import DATA_DIR

Row = dict[str, str]


def _csv(path: Path) -> Iterator[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        yield from csv.DictReader(f)


def _advbench(src: Path) -> Iterator[Row]:
    for i, r in enumerate(_csv(src / "harmful_behaviors.csv")):
        yield {"id": f"advbench-{i}", "text": r["goal"], "label": "toxic"}


def _harmbench(src: Path) -> Iterator[Row]:
    for name in ("harmbench_behaviors_text_test.csv", "harmbench_behaviors_text_val.csv"):
        for r in _csv(src / name):
            if r["FunctionalCategory"] == "standard":
                yield {"id": r["BehaviorID"], "text": r["Behavior"], "label": "toxic"}


def _jailbreakbench(src: Path) -> Iterator[Row]:
    for r in _csv(src / "harmful-behaviors.csv"):
        yield {"id": f"jbb-harmful-{r['']}", "text": r["Goal"], "label": "toxic"}
    for r in _csv(src / "benign-behaviors.csv"):
        yield {"id": f"jbb-benign-{r['index']}", "text": r["goal"], "label": "seemingly_toxic"}


def _strongreject(src: Path) -> Iterator[Row]:
    for i, r in enumerate(_csv(src / "strongreject_dataset.csv")):
        yield {"id": f"strongreject-{i}", "text": r["forbidden_prompt"], "label": "toxic"}


def _simple_safety_tests(src: Path) -> Iterator[Row]:
    for r in _csv(src / "simple_safety_tests.csv"):
        yield {"id": r["id"], "text": r["prompts_final"], "label": "toxic"}


def _coconot(src: Path) -> Iterator[Row]:
    for r in read_jsonl(src / "coconot_pref.jsonl"):
        if r["category"] == "Requests with safety concerns":
            yield {"id": f"coconot-{r['id']}", "text": r["prompt"], "label": "seemingly_toxic"}


def _self_instruct(src: Path) -> Iterator[Row]:
    for r in read_jsonl(src / "seed_tasks.jsonl"):
        extra = r["instances"][0]["input"].strip()
        text = r["instruction"].strip() + (f"\n\n{extra}" if extra else "")
        yield {"id": r["id"], "text": text, "label": "benign"}


def _xstest(src: Path) -> Iterator[Row]:
    for r in _csv(src / "xstest_prompts.csv"):
        label = "toxic" if r["label"] == "unsafe" else "seemingly_toxic"
        yield {"id": f"xstest-{r['id']}", "text": r["prompt"], "label": label, "type": r["type"]}


EXTRACTORS: dict[str, Callable[[Path], Iterator[Row]]] = {
    "advbench": _advbench,
    "harmbench": _harmbench,
    "jailbreakbench": _jailbreakbench,
    "strongreject": _strongreject,
    "simple_safety_tests": _simple_safety_tests,
    "coconot": _coconot,
    "self_instruct": _self_instruct,
    "xstest": _xstest,
}


def build(source_root: Path, out: Path = DATA_DIR) -> dict[str, int]:
    """Write ``out/<source>/prompts.jsonl`` plus SOURCE.md/LICENSE for every source; return row counts."""
    counts = {}
    for name, extract in EXTRACTORS.items():
        src = source_root / name
        rows = ({**r, "text": r["text"].strip()} for r in extract(src) if r["text"].strip())
        counts[name] = write_extract(rows, src, out / name, "prompts.jsonl")
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("source_root", type=Path, help="folder holding the raw sources (advbench/, xstest/, ...)")
    parser.add_argument("--out", type=Path, default=DATA_DIR, help="output folder (default: the package's data/)")
    args = parser.parse_args()
    for name, n in build(args.source_root, args.out).items():
        print(f"{name}: {n} prompts")


if __name__ == "__main__":
    main()
