"""Write the matched twins (dcr/data/twins/prompts.jsonl) from `dcr.prompts.twins`; the rows are a pure
function of that module and the shipped XSTest prompts (near-duplicates of XSTest are dropped)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from dcr import DATA_DIR
from dcr.prompts.sets import load_xstest
from dcr.prompts.twins import rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DATA_DIR / "twins", help="output folder")
    out = parser.parse_args().out
    out.mkdir(parents=True, exist_ok=True)
    data = rows(list(load_xstest()["text"]))
    with (out / "prompts.jsonl").open("w", encoding="utf-8") as f:
        for r in data:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    counts = {label: sum(r["label"] == label for r in data) for label in ("seemingly_toxic", "toxic")}
    print(f"{len(data)} prompts -> {out / 'prompts.jsonl'} {counts}")


if __name__ == "__main__":
    main()
