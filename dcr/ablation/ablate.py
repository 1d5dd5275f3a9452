"""`dcr ablate`: arm (e), the training-free rival of DCR, applied to a model (usually (a)'s aligned one).

Reads the DCR stage's training prompts of three classes (harmful, seemingly harmful, harmless; the train
split only), takes their mean pooled states at layer l, forms the refusal direction and the false-refusal
direction made orthogonal to it (`directions`), removes `coefficient` of the latter from every matrix that
writes into the residual stream (`weight_edit`) and saves the edited model as an ordinary Hugging Face
folder (``<output_dir>/model``, with ``dcr.json``) beside ``directions.safetensors``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from dcr.ablation.config import AblateConfig
from dcr.ablation.directions import Directions, class_means, estimate_directions
from dcr.ablation.weight_edit import ablate_direction
from dcr.modeling.export import save_refined
from dcr.modeling.model import layer_before_load, load_model
from dcr.modeling.prompt_embeddings import embed_texts
from dcr.modeling.ranks import start
from dcr.prompts.sets import load_labelled, split
from dcr.prompts.tables import DataError
from dcr.run_lock import claim


def training_prompts(config: AblateConfig) -> dict[str, list[str]]:
    """The train split's prompts of each of the three classes (at most `max_prompts` each, a seeded draw)."""
    names = {"toxic": config.harmful, "seemingly_toxic": config.seemingly_harmful, "benign": config.harmless}
    labelled, _ = load_labelled(
        config.data,
        classes=list(names.values()),
        text_column=config.text_column,
        label_column=config.label_column,
        sources=config.sources,
    )
    train = split(labelled, config.val_fraction)["train"]
    rng = np.random.default_rng(config.seed)
    out = {}
    for role, label in names.items():
        texts = [t for t, name in zip(train["text"], train["label_name"], strict=True) if name == label]
        if not texts:
            raise DataError(f"no training prompt is labelled {label!r} (the {role} class); check the labels")
        if config.max_prompts is not None and len(texts) > config.max_prompts:
            texts = [texts[i] for i in sorted(rng.choice(len(texts), config.max_prompts, replace=False))]
        out[role] = texts
    return out


def ablate(config: AblateConfig) -> Path:
    """Run `dcr ablate` as configured; return the folder of the edited model."""
    ranks, device = start(config.device)
    out = Path(config.output_dir)
    with claim(out, ranks):  # the output folder is this run's until it ends (dcr.run_lock)
        layer = layer_before_load(config.layer, config.model, config.revision)
        texts = training_prompts(config)
        model, tokenizer = load_model(config.model, device=device, dtype=config.dtype, revision=config.revision)

        def embed(rows: list[str]) -> torch.Tensor:
            return embed_texts(
                model, tokenizer, rows, layer, pooling=config.pooling, chat_template=config.chat_template,
                max_length=config.max_length, batch_size=config.batch_size, device=device,
            )  # fmt: skip

        found = estimate_directions(class_means(embed, texts), {k: len(v) for k, v in texts.items()})
        edited = ablate_direction(model, found.false_refusal, config.coefficient)
        if ranks.main:  # under torchrun every rank computes the same edit; rank 0 writes it
            out.mkdir(parents=True, exist_ok=True)
            directions = {"refusal": found.refusal.contiguous(), "false_refusal": found.false_refusal.contiguous()}
            save_file(directions, out / "directions.safetensors")
            save_refined(model, tokenizer, out / "model", _meta(config, layer, found, edited))
        ranks.barrier()
        return out / "model"


def _meta(config: AblateConfig, layer: int, found: Directions, edited: list[str]) -> dict:
    return {
        "stage": "ablate",
        "base_model": config.model,
        "layer": layer,
        "pooling": config.pooling,
        "coefficient": config.coefficient,
        "prompts": found.counts,
        "refusal_norm": found.refusal_norm,
        "false_refusal_norm": found.false_refusal_norm,
        "cosine_before_orthogonalisation": found.cosine_before,
        "edited": edited,
    }
