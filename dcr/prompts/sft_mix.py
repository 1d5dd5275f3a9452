"""The alignment stage's training mix: benign (prompt, answer) pairs plus (harmful prompt, refusal) pairs.

Benign pairs are the Self-Instruct seed tasks and the CoCoNot contrast pairs (compliant answers to prompts that
only look unsafe), shipped in ``dcr/data/sft/``. Prompts to refuse are HH-RLHF harmless-base first turns,
answered by `dcr.prompts.refusals`. Invariant (tested): no prompt to refuse is a prompt of the DCR stage's shipped data
or of any evaluation set, and no benign pair's prompt is an evaluation prompt. The share of refusal pairs is a
setting (about 5% in the DCR paper's setup).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import cache
from pathlib import Path

import datasets
import numpy as np

from dcr import DATA_DIR
from dcr.prompts.eval_sets import SETS, load_set
from dcr.prompts.refusals import refusal_for
from dcr.prompts.sets import TRAIN_SOURCES, DataError, normalise

SFT_DIR = DATA_DIR / "sft"
BENIGN_SOURCES = ("self_instruct", "coconot")
REFUSAL_SOURCE = "hh_rlhf_harmless"


def _rows(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


@cache
def evaluation_prompts() -> frozenset[str]:
    """Normalised text of every prompt of every evaluation set."""
    return frozenset(normalise(r["text"]) for name in SETS for r in load_set(name))


@cache
def dcr_stage_prompts() -> frozenset[str]:
    """Normalised text of every prompt shipped for the DCR stage, whatever its label or split."""
    return frozenset(normalise(r["text"]) for s in TRAIN_SOURCES for r in _rows(DATA_DIR / s / "prompts.jsonl"))


def benign_pairs(sources: Sequence[str] = BENIGN_SOURCES) -> list[dict]:
    """(prompt, response) rows of the shipped benign sources, evaluation prompts removed, first copy kept."""
    unknown = sorted(set(sources) - set(BENIGN_SOURCES))
    if unknown:
        raise DataError(f"unknown benign source(s) {unknown}; available: {list(BENIGN_SOURCES)}")
    banned, seen, out = evaluation_prompts(), set(), []
    for source in sources:
        for r in _rows(SFT_DIR / source / "pairs.jsonl"):
            key = normalise(r["prompt"])
            if key and r["response"].strip() and key not in banned and key not in seen:
                seen.add(key)
                out.append({"prompt": r["prompt"], "response": r["response"], "kind": "benign", "source": source})
    return out


def refusal_prompts() -> list[str]:
    """Prompts to refuse: HH-RLHF harmless first turns that are neither DCR-stage nor evaluation prompts."""
    banned = evaluation_prompts() | dcr_stage_prompts()
    seen, out = set(), []
    for r in _rows(SFT_DIR / REFUSAL_SOURCE / "prompts.jsonl"):
        key = normalise(r["text"])
        if key and key not in banned and key not in seen:
            seen.add(key)
            out.append(r["text"])
    return out


def build_mix(
    refusal_share: float = 0.05,
    *,
    examples: int | None = None,
    seed: int = 0,
    benign_sources: Sequence[str] = BENIGN_SOURCES,
) -> datasets.Dataset:
    """The SFT mix (columns prompt, response, kind, source) with ``refusal_share`` of refusal pairs.

    ``examples`` caps the size of the mix (default: every benign pair plus the matching number of refusals).
    Which pairs are drawn depends only on ``seed``.
    """
    if not 0.0 <= refusal_share < 1.0:
        raise DataError(f"refusal_share must be in [0, 1), got {refusal_share}")
    benign, toxic = benign_pairs(benign_sources), refusal_prompts()
    total = examples if examples is not None else round(len(benign) / (1.0 - refusal_share))
    n_refusal = round(total * refusal_share)
    n_benign = total - n_refusal
    if n_benign > len(benign) or n_refusal > len(toxic) or total < 1:
        raise DataError(
            f"cannot draw {n_benign} benign and {n_refusal} refusal pairs from {len(benign)} and {len(toxic)} available"
        )
    rng = np.random.default_rng(np.random.SeedSequence([seed, 7]))
    rows = [benign[i] for i in sorted(rng.permutation(len(benign))[:n_benign])]
    rows += [
        {"prompt": toxic[i], "response": refusal_for(toxic[i], seed), "kind": "refusal", "source": REFUSAL_SOURCE}
        for i in sorted(rng.permutation(len(toxic))[:n_refusal])
    ]
    return datasets.Dataset.from_list(rows)
