"""Which shipped prompt belongs where: the names of the DCR stage's sources, and the prompt lists kept apart
across stages (every evaluation prompt, every DCR-stage prompt, the HH-RLHF pool of prompts to refuse and the
DCR paper's 500 drawn from it). Sets, the alignment mix and the evaluation sets all read these lists here."""

from __future__ import annotations

import hashlib
from functools import cache

from dcr import DATA_DIR
from dcr.prompts.eval_sets import SETS, load_set
from dcr.prompts.tables import normalise, read_jsonl

DEFAULT_SOURCES = (
    "advbench",
    "harmbench",
    "jailbreakbench",
    "strongreject",
    "simple_safety_tests",
    "coconot",
    "self_instruct",
)
OPT_IN_SOURCES = ("twins",)  # generated matched pairs (dcr/prompts/twins.py); used only when named
TRAIN_SOURCES = DEFAULT_SOURCES + OPT_IN_SOURCES
EVAL_ONLY_SOURCES = ("xstest",)
# The DCR paper's contrastive data, used only when named: XSTest's 250 safe prompts (seemingly toxic; XSTest is
# then in-distribution) and 500 HH-RLHF harmful prompts kept out of the alignment mix (`dcr.prompts.sft_mix`).
PAPER_SOURCES = ("xstest_safe", "hh_rlhf_harmful")
REFUSAL_SOURCE = "hh_rlhf_harmless"
DCR_HH_SOURCE = "hh_rlhf_harmful"  # the DCR stage's share of the HH-RLHF prompts (the DCR paper's toxic class)
DCR_HH_PROMPTS = 500


@cache
def evaluation_prompts() -> frozenset[str]:
    """Normalised text of every prompt of every evaluation set."""
    return frozenset(normalise(r["text"]) for name in SETS for r in load_set(name))


@cache
def dcr_stage_prompts() -> frozenset[str]:
    """Normalised text of every prompt shipped for the DCR stage, whatever its label or split."""
    return frozenset(normalise(r["text"]) for s in TRAIN_SOURCES for r in read_jsonl(DATA_DIR / s / "prompts.jsonl"))


@cache
def hh_pool() -> tuple[str, ...]:
    """HH-RLHF harmless first turns that are neither shipped DCR-stage nor evaluation prompts, first copy kept."""
    banned = evaluation_prompts() | dcr_stage_prompts()
    seen, out = set(), []
    for r in read_jsonl(DATA_DIR / "sft" / REFUSAL_SOURCE / "prompts.jsonl"):
        key = normalise(r["text"])
        if key and key not in banned and key not in seen:
            seen.add(key)
            out.append(r["text"])
    return tuple(out)


@cache
def dcr_hh_prompts() -> tuple[str, ...]:
    """The 500 HH-RLHF prompts of the DCR paper's toxic class: the pool's first by SHA-256 of the normalised text
    (a fixed choice, independent of seeds and of the rest of the pool)."""
    digest = lambda t: hashlib.sha256(normalise(t).encode("utf-8")).hexdigest()  # noqa: E731
    return tuple(sorted(hh_pool(), key=digest)[:DCR_HH_PROMPTS])
