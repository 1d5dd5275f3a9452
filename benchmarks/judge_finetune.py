"""The fine-tuned encoder judge against the cue detector, leave one model family out.

For each model family in ``dcr/data/refusal_labels/`` (the development sample, labelled by the project, is only
ever trained on), `dcr.evaluation.encoder_judge.train_encoder_judge` fine-tunes all-MiniLM-L6-v2 on every other
family's labelled (prompt, response) pairs with the default settings, and the judge and the cue detector
(`dcr.evaluation.refusal.is_refusal`) are scored on the held-out family. The encoder would replace the cues as
the default judge only if it won on every held-out family. The judge of the fold that holds out the project's
own models is kept (``--keep DIR``): it is the judge that never saw those models' responses, which is the one to
re-judge the pipeline's completions with.

    python benchmarks/judge_finetune.py --keep runs/judge-not-project
    # writes benchmarks/results/judge_finetune.json and prints the table
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from judge_probe import print_table, scores  # noqa: E402 (benchmarks/ is on the path when run as a script)

from dcr.evaluation.encoder_judge import (
    DEVELOPMENT_FAMILY,
    PROJECT_FAMILY,
    EncoderJudge,
    TrainSettings,
    labelled_responses,
    train_encoder_judge,
)
from dcr.evaluation.refusal import is_refusal

RESULT = Path(__file__).resolve().parent / "results" / "judge_finetune.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, help="where to keep the judge trained without the project's models")
    parser.add_argument("--families", nargs="*", help="hold out only these families (default: every one)")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    rows = labelled_responses()
    families = args.families or sorted({r["family"] for r in rows} - {DEVELOPMENT_FAMILY})
    settings = TrainSettings()
    table = []
    for held in families:
        train = [r for r in rows if r["family"] != held]
        test = [r for r in rows if r["family"] == held]
        with tempfile.TemporaryDirectory() as tmp:
            out = args.keep if held == PROJECT_FAMILY and args.keep else Path(tmp) / "judge"
            start = time.perf_counter()
            train_encoder_judge(train, out, settings=settings, progress=True)
            seconds = time.perf_counter() - start
            judge = EncoderJudge.load(out)
            predicted = torch.tensor(judge([r["prompt"] for r in test], [r["response"] for r in test]))
        truth = torch.tensor([r["label"] == "refusal" for r in test])
        cues = torch.tensor([is_refusal(r["response"]) for r in test])
        table.append(
            {
                "family": held,
                "rows": len(test),
                "refusals": int(truth.sum()),
                "trained_on": len(train),
                "train_seconds": round(seconds, 1),
                "encoder": scores(predicted, truth),
                "cues": scores(cues, truth),
            }
        )
        print(json.dumps(table[-1]), flush=True)
    wins = all(r["encoder"]["accuracy"] > r["cues"]["accuracy"] for r in table)
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    result = {"settings": vars(settings), "rows": table, "encoder_wins_every_family": wins}
    RESULT.write_text(json.dumps(result, indent=1) + "\n")
    print_table(table, "encoder")
    print(f"the encoder wins on every held-out family: {wins}")


if __name__ == "__main__":
    main()
