"""Named settings of the pipeline: ``quick`` (a 2-core CPU), ``paper`` (the DCR paper's protocol, at the quick
size) and ``full`` (a GPU).

A profile has one section per stage, each holding options of that stage: ``refine`` (`RefineConfig`),
``align`` (`AlignConfig`), ``ablate`` (`AblateConfig`, arm (e): (a)'s model with the false-refusal direction
ablated; its layer defaults to the DCR stage's) and ``evaluate`` (`EvaluateConfig`), plus ``data_side``, the
alignment options that arms (c) and (d) change (the data-side fix), and the seeds. Every other alignment
setting is shared by the four trained arms.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

SECTIONS = ("refine", "align", "data_side", "ablate", "evaluate")
# Arm (e): directions from 64 training prompts per class (the DCR stage's data), full ablation.
QUICK_ABLATE = {"max_prompts": 64, "coefficient": 1.0, "max_length": 128, "batch_size": 32}
# Arms (c) and (d): half of the mix is contrast pairs (about a third in (a) and (b)), refusals unchanged.
DATA_SIDE = {"contrast_share": 0.5}
QUICK_REFINE = {
    "layer": 0.5,
    "loss": "circle",
    "margin": 0.4,
    "gamma": 80.0,
    "sources": ["twins"],
    "center": True,
    "batch_size": 32,
    "micro_batch_size": 0,
    "steps": 30,
    "lr": 2e-5,
    "warmup_steps": 3,
    "max_length": 128,
    "save_every": 0,
    "eval_every": 0,
}
QUICK_ALIGN = {
    "refusal_share": 0.25,
    "steps": 40,
    "batch_size": 8,
    "micro_batch_size": 8,
    "max_length": 128,
    "lr": 1e-4,
    "warmup_steps": 4,
    "save_every": 0,
}
# bf16 autocast with eager attention in training, bf16 weights in evaluation: on a CPU with native bf16
# (AMX) an alignment step takes 3.4 s against 5.35 in fp32, a DCR step 2.75 against 3.19 with SDPA, and generation
# half the time; under autocast PyTorch's SDPA backward is slower than eager attention (docs/pipeline.md).
# On a CPU without bf16 instructions `fp32_where_bf16_is_slow` puts them back to fp32.
QUICK_BF16 = {"precision": "bf16", "attention": "eager"}

PROFILES: dict[str, dict[str, Any]] = {
    # Sized by measurement on 2 idle CPU cores with SmolLM2-135M-Instruct; see docs/pipeline.md.
    "quick": {
        # Three seeds and every prompt of the three sets: 16 new tokens (the cue verdicts of 32-token answers
        # agree 99.5% on their first 16 tokens: benchmarks/results/verdict_length.json); prompts are not cut,
        # and neither are the alignment steps (at 20 the aligned model barely refuses; docs/pipeline.md).
        "seeds": [0, 1, 2],
        # The matched twins with a centred Circle loss: the DCR-stage setting that improves XSTest separation
        # at layer 15 (docs/dcr_stage.md); the public sets' contrast does not carry over to XSTest.
        "refine": {**QUICK_REFINE, **QUICK_BF16},
        # 40 steps of 8 pairs see 320 pairs: at the paper's 5% that is 16 refusals, too few to teach refusing,
        # so the quick profile raises the share and the learning rate (see docs/pipeline.md).
        "align": {**QUICK_ALIGN, **QUICK_BF16},
        "data_side": DATA_SIDE,
        "ablate": QUICK_ABLATE,
        "evaluate": {
            "dtype": "bf16",
            "sets": ["xstest_safe", "xstest_unsafe", "coconot_eval"],
            "limit": None,
            "max_new_tokens": 16,
            "batch_size": 80,
            "perplexity": True,
            "perplexity_limit": 20,
        },
    },
    # The DCR paper's protocol at the quick size: Circle loss on XSTest's 250 safe prompts (seemingly toxic)
    # against 500 HH-RLHF harmful prompts that the alignment mix does not hold, no centring, tail frozen; XSTest
    # is in-distribution, JailbreakBench's matched pairs, CoCoNot and Self-Instruct are held out.
    "paper": {
        "seeds": [0],
        "refine": {**QUICK_REFINE, "sources": ["xstest_safe", "hh_rlhf_harmful"], "center": False},
        "align": QUICK_ALIGN,
        "data_side": DATA_SIDE,
        "ablate": QUICK_ABLATE,
        "evaluate": {
            "sets": [
                "xstest_safe",
                "xstest_unsafe",
                "jailbreakbench_benign",
                "jailbreakbench_harmful",
                "coconot_eval",
                "self_instruct_user",
            ],
            "limit": 24,
            "max_new_tokens": 32,
            "batch_size": 48,
            "perplexity": True,
            "perplexity_limit": 20,
        },
    },
    # A GPU and a 0.5B-2B model (e.g. a local Qwen2.5-1.5B-Instruct folder); the paper's 5% refusal share.
    "full": {
        "seeds": [0, 1, 2],
        "refine": {
            **QUICK_REFINE,
            "batch_size": 256,
            "micro_batch_size": 32,
            "steps": 200,
            "warmup_steps": 20,
            "max_length": 512,
            "save_every": 50,
            "eval_every": 50,
        },
        "align": {
            "refusal_share": 0.05,
            "steps": 600,
            "batch_size": 32,
            "micro_batch_size": 8,
            "max_length": 1024,
            "lr": 1e-5,
            "warmup_steps": 30,
            "save_every": 100,
        },
        "data_side": DATA_SIDE,
        "ablate": {"max_prompts": 512, "coefficient": 1.0, "max_length": 1024, "batch_size": 64},
        "evaluate": {
            "sets": ["xstest_safe", "xstest_unsafe", "coconot_eval", "self_instruct_user"],
            "limit": None,
            "max_new_tokens": 128,
            "batch_size": 64,
            "perplexity": True,
        },
    },
}


def fp32_where_bf16_is_slow(settings: dict[str, Any], overrides: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """For a CPU without bf16 instructions, where bf16 is slower than fp32 (`dcr.modeling.runtime.warn_if_slow_bf16`):
    set the profile's bf16 choices that ``overrides`` leave alone to fp32, and its eager attention to ``auto``
    (eager pays only under bf16), in place; the settings changed, as ``section.key``."""
    changed = []
    for section, key in {"refine": "precision", "align": "precision", "evaluate": "dtype"}.items():
        values, mine = settings[section], overrides.get(section, {})
        if values.get(key) != "bf16" or key in mine:
            continue
        values[key] = "fp32"
        changed.append(f"{section}.{key}")
        if values.get("attention") == "eager" and "attention" not in mine:
            values["attention"] = "auto"
            changed.append(f"{section}.attention")
    return changed


def profile(name: str) -> dict[str, Any]:
    """A fresh copy of the named profile."""
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; available: {list(PROFILES)}")
    return copy.deepcopy(PROFILES[name])
