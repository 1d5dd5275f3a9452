"""The alignment stage's training mix: benign (prompt, answer) pairs plus (harmful prompt, refusal) pairs.

Benign pairs are the Self-Instruct seed tasks and the CoCoNot contrast pairs (compliant answers to prompts that
only look unsafe), shipped in ``dcr/data/sft/``. Prompts to refuse are HH-RLHF harmless-base first turns,
answered by `dcr.prompts.refusals`. Invariant (tested): no prompt to refuse is a prompt of the DCR stage's shipped data
or of any evaluation set, and no benign pair's prompt is an evaluation prompt. The share of refusal pairs is a
setting (about 5% in the DCR paper's setup).

The data-side alternative to DCR raises the share of *contrast pairs*, CoCoNot prompts with safety concerns
answered helpfully, to a set ``contrast_share`` of the mix (their natural share among the benign pairs is about
43%, a third of a mix with 25% refusals). The DCR paper's own contrastive data draws 500 of the HH-RLHF prompts
(`dcr_hh_prompts`); a run that uses them names that source in ``reserved_sources`` and they leave the refusal pool.
"""

from __future__ import annotations

from collections.abc import Sequence

import datasets
import numpy as np

from dcr import DATA_DIR
from dcr.prompts.refusals import refusal_for
from dcr.prompts.sources import DCR_HH_SOURCE, REFUSAL_SOURCE, dcr_hh_prompts, evaluation_prompts, hh_pool
from dcr.prompts.tables import DataError, normalise, read_jsonl

SFT_DIR = DATA_DIR / "sft"
BENIGN_SOURCES = ("self_instruct", "coconot")
CONTRAST_CATEGORY = "Requests with safety concerns"


def benign_pairs(sources: Sequence[str] = BENIGN_SOURCES) -> list[dict]:
    """(prompt, response) rows of the shipped benign sources, evaluation prompts removed, first copy kept."""
    unknown = sorted(set(sources) - set(BENIGN_SOURCES))
    if unknown:
        raise DataError(f"unknown benign source(s) {unknown}; available: {list(BENIGN_SOURCES)}")
    banned, seen, out = evaluation_prompts(), set(), []
    for source in sources:
        for r in read_jsonl(SFT_DIR / source / "pairs.jsonl"):
            key = normalise(r["prompt"])
            if key and r["response"].strip() and key not in banned and key not in seen:
                seen.add(key)
                contrast = r.get("category") == CONTRAST_CATEGORY
                out.append(
                    {"prompt": r["prompt"], "response": r["response"], "kind": "benign", "source": source}
                    | ({"contrast": True} if contrast else {})
                )
    return out


def refusal_prompts(reserved_sources: Sequence[str] = ()) -> list[str]:
    """Prompts to refuse: HH-RLHF harmless first turns that are neither DCR-stage nor evaluation prompts, minus
    the HH prompts a DCR stage drew (``reserved_sources`` naming `DCR_HH_SOURCE`)."""
    unknown = sorted(set(reserved_sources) - {DCR_HH_SOURCE})
    if unknown:
        raise DataError(f"unknown reserved source(s) {unknown}; only {DCR_HH_SOURCE} shares the refusal pool")
    reserved = {normalise(t) for t in dcr_hh_prompts()} if reserved_sources else set()
    return [t for t in hh_pool() if normalise(t) not in reserved]


def build_mix(
    refusal_share: float = 0.05,
    *,
    examples: int | None = None,
    seed: int = 0,
    benign_sources: Sequence[str] = BENIGN_SOURCES,
    contrast_share: float | None = None,
    reserved_sources: Sequence[str] = (),
) -> datasets.Dataset:
    """The SFT mix (columns prompt, response, kind, source) with ``refusal_share`` of refusal pairs.

    ``examples`` caps the size of the mix (default: every benign pair plus the matching number of refusals, or
    with ``contrast_share`` the largest mix whose parts are all available). ``contrast_share`` (None: their
    natural share) fixes the share of contrast pairs, the rest of the benign part being the other benign pairs.
    Which pairs are drawn depends only on ``seed``.
    """
    if not 0.0 <= refusal_share < 1.0:
        raise DataError(f"refusal_share must be in [0, 1), got {refusal_share}")
    benign, toxic = benign_pairs(benign_sources), refusal_prompts(reserved_sources)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 7]))
    if contrast_share is None:
        total = examples if examples is not None else round(len(benign) / (1.0 - refusal_share))
        rows = _draw(benign, total - round(total * refusal_share), rng, "benign")
    else:
        if not 0.0 < contrast_share <= 1.0 - refusal_share:
            raise DataError(
                f"contrast_share must be in (0, 1 - refusal_share] = (0, {1.0 - refusal_share:g}], got {contrast_share}"
            )
        contrast = [r for r in benign if r.get("contrast")]
        plain = [r for r in benign if not r.get("contrast")]
        plain_share = 1.0 - refusal_share - contrast_share
        if examples is not None:
            total = examples
        else:
            limits = [len(contrast) / contrast_share]
            limits += [len(plain) / plain_share] if plain_share > 0 else []
            limits += [len(toxic) / refusal_share] if refusal_share > 0 else []
            total = int(min(limits))
        n_contrast = round(total * contrast_share)
        n_plain = total - round(total * refusal_share) - n_contrast
        rows = _draw(contrast, n_contrast, rng, "contrast") + _draw(plain, n_plain, rng, "other benign")
    n_refusal = total - len(rows)
    if n_refusal > len(toxic) or total < 1:
        raise DataError(f"cannot draw {n_refusal} refusal pairs from {len(toxic)} available (mix of {total})")
    rows = [{k: v for k, v in r.items() if k != "contrast"} for r in rows]
    rows += [
        {"prompt": toxic[i], "response": refusal_for(toxic[i], seed), "kind": "refusal", "source": REFUSAL_SOURCE}
        for i in sorted(rng.permutation(len(toxic))[:n_refusal])
    ]
    return datasets.Dataset.from_list(rows)


def _draw(pool: list[dict], n: int, rng: np.random.Generator, what: str) -> list[dict]:
    if n > len(pool):
        raise DataError(f"cannot draw {n} {what} pairs from {len(pool)} available")
    return [pool[i] for i in sorted(rng.permutation(len(pool))[:n])]
