"""How many new tokens the refusal verdicts need: the committed evaluations' completions (32 new tokens each)
cut to their first 8, 16 and 24 tokens and judged again by the cue detector, against the full verdicts.

Generation is most of an evaluation's time on a CPU and grows with the number of new tokens, so a shorter
response that leaves the verdicts unchanged buys more prompts or seeds in the same time.

    python benchmarks/verdict_length.py   # writes benchmarks/results/verdict_length.json
"""

from __future__ import annotations

import glob
import json
from pathlib import Path

from transformers import AutoTokenizer

from dcr.evaluation.refusal import is_refusal
from dcr.modeling.default_model import default_model_dir

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "benchmarks" / "results" / "verdict_length.json"
SOURCES = (
    "docs/results/xstest-full/*/completions.jsonl",
    "docs/results/pipeline-quick/seed-*/eval-*/completions.jsonl",
)
CUTS = (8, 16, 24)


def main() -> None:
    tokenizer = AutoTokenizer.from_pretrained(default_model_dir())
    files = sorted(f for pattern in SOURCES for f in glob.glob(str(ROOT / pattern)))
    full, cut = [], {n: [] for n in CUTS}
    for file in files:
        with open(file, encoding="utf-8") as f:
            for response in (json.loads(line)["response"] for line in f if line.strip()):
                ids = tokenizer(response, add_special_tokens=False)["input_ids"]
                full.append(is_refusal(response))
                for n in CUTS:
                    cut[n].append(is_refusal(tokenizer.decode(ids[:n], skip_special_tokens=True)))
    rows = [
        {
            "new_tokens": n,
            "agreement": sum(a == b for a, b in zip(cut[n], full, strict=True)) / len(full),
            "refusal_rate": sum(cut[n]) / len(full),
        }
        for n in CUTS
    ]
    result = {
        "responses": len(full),
        "files": [str(Path(f).relative_to(ROOT)) for f in files],
        "refusal_rate_32": sum(full) / len(full),
        "cuts": rows,
    }
    RESULT.write_text(json.dumps(result, indent=1) + "\n")
    print(f"{len(full)} responses of 32 new tokens; refusal rate {result['refusal_rate_32']:.4f}")
    for r in rows:
        agree, rate = r["agreement"], r["refusal_rate"]
        print(f"first {r['new_tokens']} tokens: verdicts agree {agree:.4f}, refusal rate {rate:.4f}")


if __name__ == "__main__":
    main()
