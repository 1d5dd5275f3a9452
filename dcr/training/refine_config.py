"""Settings of the DCR stage (`dcr refine`). The defaults are the recommended setting (the matched twins,
a centred Circle loss at the middle layer; docs/dcr_stage.md), also written out in configs/dcr_refine.yaml."""

from __future__ import annotations

from dataclasses import dataclass

from dcr.config import ConfigError, option
from dcr.training.config import TrainingConfig


@dataclass
class RefineConfig(TrainingConfig):
    """Everything `dcr refine` needs."""

    layer: int | float = option(
        0.5,
        "Layer l whose hidden state is refined: an index 1..depth (integer) or a fraction of the depth (a number "
        "with a point, e.g. 0.5). Layers above l are frozen and not even computed.",
        topic="model",
    )
    chat_template: bool = option(
        True,
        "Render each prompt as a user turn through the tokenizer's chat template with the generation prompt.",
        topic="data",
    )
    max_length: int = option(512, "Longest prompt in tokens; longer prompts are cut from the left.", topic="data")
    data: str | None = option(
        None,
        "Training prompts: a CSV/JSONL/JSON/Parquet file or a `datasets` folder with a text and a label column. "
        "Unset: the prompt sets shipped with dcr (see sources).",
        topic="data",
    )
    text_column: str = option("text", "Column of the data holding the prompt text.", topic="data")
    label_column: str = option("label", "Column of the data holding the class label.", topic="data")
    classes: list[str] | None = option(
        None,
        "Class labels to train on, in class-id order. Default: seemingly_toxic toxic for the shipped data (add "
        "benign for a third class), every label value for a user file. Rows of other labels are dropped.",
        topic="data",
    )
    sources: list[str] | None = option(
        ["twins"],
        "Shipped sources to use: twins (generated matched pairs, dcr/data/twins/SOURCE.md), the public sets "
        "advbench harmbench jailbreakbench strongreject simple_safety_tests coconot self_instruct, or the DCR "
        "paper's data xstest_safe hh_rlhf_harmful (XSTest then becomes in-distribution).",
        topic="data",
    )
    val_fraction: float = option(0.1, "Share of prompts held out for validation (by text hash).", topic="data")
    center: bool = option(
        True,
        "Subtract the contrastive batch's mean representation before the loss, so it separates the classes "
        "instead of shrinking the direction all hidden states share.",
        topic="contrastive loss",
    )
    batch_size: int = option(64, "Prompts per contrastive batch, the same number from every class.", topic="batch")
    micro_batch_size: int = option(
        16,
        "Gradient caching: embed the contrastive batch in micro-batches of this size, so memory does not grow "
        "with batch_size; 0 turns caching off.",
        topic="batch",
    )
    lora_target_modules: list[str] | None = option(
        None,
        "Linear layers that get adapters, by short name (e.g. q_proj v_proj). Default: all linear layers below l.",
        topic="LoRA",
    )
    train_embeddings: bool = option(
        False, "Also train the input embeddings (refused when they are tied to the LM head).", topic="model"
    )
    output_dir: str = option(
        "runs/dcr", "Run folder: metrics.jsonl, checkpoints/, and the refined model in model/.", topic="run folder"
    )
    eval_every: int = option(
        0,
        "Log validation separation (1-NN accuracy, cross-class cosine, probe AUROC) every this many steps and at "
        "the end; 0: only at the end.",
        topic="run folder",
    )

    def checks(self) -> dict[str, bool]:
        return {
            **super().checks(),
            "max_length": self.max_length >= 1,
            "val_fraction": 0.0 <= self.val_fraction < 1.0,
            "batch_size": self.batch_size >= 4,
            "micro_batch_size": self.micro_batch_size >= 0,
            "eval_every": self.eval_every >= 0,
        }

    def validate(self) -> RefineConfig:
        super().validate()
        if isinstance(self.layer, float) and not 0.0 < self.layer <= 1.0:
            raise ConfigError(f"layer as a fraction must be in (0, 1], got {self.layer}")
        if isinstance(self.layer, int) and self.layer < 1:
            raise ConfigError(f"layer as an index must be at least 1, got {self.layer}")
        if self.lora and self.train_embeddings:
            raise ConfigError("lora and train_embeddings cannot be combined")
        return self
