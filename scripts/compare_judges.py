"""Every evaluation under the given folders judged again by a second judge, beside its own verdicts: the
markdown section the pipeline adds with ``second_judge`` (`dcr.pipeline.judges`), for finished runs.

    python scripts/compare_judges.py docs/results/pipeline-quick --judge runs/judge [--out rates.json]

An evaluation folder is any folder holding results.json and completions.jsonl; rows are labelled by the model
name in results.json. Nothing is written into the evaluation folders.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from dcr.evaluation.judge import CUES
from dcr.pipeline.judges import compare_judges, judges_section


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path, help="run folders to search for evaluations")
    parser.add_argument("--judge", required=True, help="the second judge (a trained judge's or a chat model's folder)")
    parser.add_argument("--out", type=Path, help="also write the rates as JSON")
    args = parser.parse_args()
    evaluations = sorted({p.parent for folder in args.folders for p in folder.rglob("results.json")})
    evaluations = [e for e in evaluations if (e / "completions.jsonl").is_file()]
    if not evaluations:
        raise SystemExit(f"no finished evaluation under {[str(f) for f in args.folders]}")
    labels = {json.loads((e / "results.json").read_text())["model"]: e for e in evaluations}
    first = {json.loads((e / "results.json").read_text())["settings"].get("judge", CUES) for e in evaluations}
    table = compare_judges(labels, args.judge)
    print("\n".join(judges_section(table, " / ".join(sorted(first)), args.judge)))
    if args.out:
        args.out.write_text(json.dumps({"second_judge": args.judge, "rates": table}, indent=1) + "\n")


if __name__ == "__main__":
    main()
