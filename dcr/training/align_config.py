"""Settings of the alignment stage (`dcr align`): the shared training settings plus the SFT mix and the
optional retention term."""

from __future__ import annotations

from dataclasses import dataclass

from dcr.config import ConfigError, option
from dcr.prompts.sft_mix import BENIGN_SOURCES
from dcr.prompts.sources import DCR_HH_SOURCE
from dcr.training.config import TrainingConfig


@dataclass
class AlignConfig(TrainingConfig):
    """Everything `dcr align` needs: SFT on benign answers plus refusals, with an optional retention term."""

    model: str = option(
        "default",
        "Model to align: a local Hugging Face causal-LM folder (e.g. the output of `dcr refine`), or 'default' "
        "for the embedded SmolLM2-135M-Instruct.",
        topic="model",
    )
    steps: int = option(200, "Optimizer steps.", topic="optimization")
    refusal_share: float = option(
        0.05, "Share of (harmful prompt, refusal) pairs in the mix (the DCR paper: about 5 percent).", topic="data"
    )
    examples: int | None = option(
        None,
        "Size of the SFT mix. Unset: every shipped benign pair plus the matching number of refusal pairs.",
        topic="data",
    )
    benign_sources: list[str] = option(list(BENIGN_SOURCES), "Shipped benign (prompt, answer) sources.", topic="data")
    contrast_share: float | None = option(
        None,
        "Share of the mix given to contrast pairs: CoCoNot prompts with safety concerns answered helpfully (the "
        "data-side fix for over-refusal). Unset: their natural share of the benign pairs (about a third of the mix).",
        topic="data",
    )
    reserved_sources: list[str] | None = option(
        None,
        f"DCR-stage sources drawn from the refusal pool ({DCR_HH_SOURCE}); their prompts are left out of the mix, "
        "so the two stages never share a prompt.",
        topic="data",
    )
    max_length: int = option(
        512, "Longest conversation in tokens; the prompt keeps at most half, the answer is cut.", topic="data"
    )
    batch_size: int = option(16, "Conversations per optimizer step.", topic="batch")
    micro_batch_size: int = option(
        8, "Conversations per forward/backward (gradient accumulation); 0: the whole batch.", topic="batch"
    )
    retention_weight: float = option(
        0.0,
        "Weight of the retention term: the contrastive loss at layer l between the mix's refusal prompts and its "
        "benign prompts, keeping the separation DCR built; 0 turns it off.",
        topic="contrastive loss",
    )
    retention_batch_size: int = option(16, "Retention batch: half refusal, half benign.", topic="contrastive loss")
    retention_layer: int | float | None = option(
        None,
        "Layer l of the retention term (index or fraction). Unset: dcr.json's, else 0.5.",
        topic="contrastive loss",
    )
    lora: bool = option(
        False,
        "Train LoRA adapters on every decoder layer instead of all weights (needs peft); they are merged into the "
        "saved model.",
        topic="LoRA",
    )
    output_dir: str = option(
        "runs/align", "Run folder: metrics.jsonl, checkpoints/, and the aligned model in model/.", topic="run folder"
    )

    def checks(self) -> dict[str, bool]:
        return {
            **super().checks(),
            "refusal_share": 0.0 <= self.refusal_share < 1.0,
            "examples": self.examples is None or self.examples >= 1,
            "contrast_share": self.contrast_share is None or 0.0 < self.contrast_share <= 1.0 - self.refusal_share,
            "max_length": self.max_length >= 8,
            "batch_size": self.batch_size >= 1,
            "micro_batch_size": self.micro_batch_size >= 0,
            "retention_weight": self.retention_weight >= 0,
            "retention_batch_size": self.retention_batch_size >= 4 and self.retention_batch_size % 2 == 0,
        }

    def validate(self) -> AlignConfig:
        super().validate()
        if self.retention_weight > 0 and self.refusal_share == 0:
            raise ConfigError("the retention term needs refusal pairs: set refusal_share above 0")
        return self
