"""Extract the alignment-stage data in dcr/data/sft/ from the licence-clean raw sources.

Run once by maintainers (``python scripts/build_sft_data.py /path/to/shared/data``); the package only reads the
compact JSONL files written here. Benign (prompt, answer) pairs come from the Self-Instruct seed tasks and the
CoCoNot contrast preference pairs (their compliant ``chosen`` answers); prompts to refuse are the unique first
human turns of Anthropic HH-RLHF harmless-base (the DCR paper's toxic source, used by no other stage). Each
folder gets the source's SOURCE.md and LICENSE so the attribution travels with the data.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator
from pathlib import Path

from extract import read_jsonl, write_extract

from dcr import DATA_DIR

SFT_DIR = DATA_DIR / "sft"
_HUMAN, _ASSISTANT = "\n\nHuman:", "\n\nAssistant:"


def _self_instruct(src: Path) -> Iterator[dict]:
    for r in read_jsonl(src / "seed_tasks.jsonl"):
        first = r["instances"][0]
        extra = first["input"].strip()
        prompt = r["instruction"].strip() + (f"\n\n{extra}" if extra else "")
        yield {"id": r["id"], "prompt": prompt, "response": first["output"].strip()}


def _coconot(src: Path) -> Iterator[dict]:
    for r in read_jsonl(src / "coconot_pref.jsonl"):
        yield {
            "id": f"coconot-{r['id']}",
            "prompt": r["prompt"].strip(),
            "response": r["chosen"].strip(),
            "category": r["category"],
        }


def first_turn(transcript: str) -> str:
    """The first human turn of an HH-RLHF transcript ("\\n\\nHuman: ... \\n\\nAssistant: ...")."""
    head = transcript.split(_HUMAN, 1)[1] if _HUMAN in transcript else transcript
    return head.split(_ASSISTANT, 1)[0].strip()


def _hh_rlhf_harmless(src: Path) -> Iterator[dict]:
    seen: set[str] = set()
    for i, r in enumerate(read_jsonl(src / "harmless-base_test.jsonl.gz")):
        text = first_turn(r["chosen"])
        key = " ".join(text.casefold().split())
        if text and key not in seen:
            seen.add(key)
            yield {"id": f"hh-harmless-test-{i}", "text": text, "label": "toxic"}


# output folder -> (raw source folder, output file, extractor)
EXTRACTORS: dict[str, tuple[str, str, Callable[[Path], Iterator[dict]]]] = {
    "self_instruct": ("self_instruct", "pairs.jsonl", _self_instruct),
    "coconot": ("coconot", "pairs.jsonl", _coconot),
    "hh_rlhf_harmless": ("hh_rlhf_harmless", "prompts.jsonl", _hh_rlhf_harmless),
}


def build(source_root: Path, out: Path = SFT_DIR) -> dict[str, int]:
    """Write every extract with its SOURCE.md and LICENSE under ``out``; return the row counts."""
    counts = {}
    for name, (source, filename, extract) in EXTRACTORS.items():
        counts[name] = write_extract(extract(source_root / source), source_root / source, out / name, filename)
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "source_root", type=Path, help="folder holding the raw sources (coconot/, hh_rlhf_harmless/, ...)"
    )
    parser.add_argument("--out", type=Path, default=SFT_DIR, help="output folder (default: the package's data/sft/)")
    args = parser.parse_args()
    for name, n in build(args.source_root, args.out).items():
        print(f"{name}: {n} rows")


if __name__ == "__main__":
    main()
