"""Settings of `dcr ablate`."""

from __future__ import annotations

from dataclasses import dataclass

from dcr.config import Settings, option


@dataclass
class AblateConfig(Settings):
    """Everything `dcr ablate` needs."""

    model: str = option(
        "default",
        "Model to edit (usually an aligned one): a local Hugging Face causal-LM folder, a cached Hub id, or "
        "'default' for the embedded SmolLM2-135M-Instruct.",
        topic="model",
    )
    revision: str | None = option(None, "Revision of a Hub-id model in the local cache.", topic="model")
    device: str = option("auto", "Device: auto (CUDA if available), cpu, cuda, ...", topic="model")
    dtype: str = option(
        "auto",
        "Weights dtype (as in refine and align): auto (the checkpoint's own), fp32, bf16 or fp16; the edit is "
        "computed in fp32 and the model saved in this dtype.",
        ("auto", "fp32", "bf16", "fp16"),
        "model",
    )
    layer: int | float = option(
        0.5, "Layer l whose pooled states give the directions: an index 1..depth or a fraction.", topic="directions"
    )
    pooling: str = option("last", "Token states to one vector, as in the DCR stage.", ("last", "mean"), "directions")
    chat_template: bool = option(True, "Wrap prompts in the chat template, as the DCR stage does.", topic="directions")
    max_length: int = option(512, "Longest prompt in tokens.", topic="directions")
    coefficient: float = option(
        1.0,
        "Share of the false-refusal direction removed from the weights: 1 full ablation, below 1 partial.",
        topic="directions",
    )
    data: str | None = option(
        None,
        "Labelled prompt file (CSV, JSONL, JSON, Parquet or a datasets folder). Unset: the shipped sets.",
        topic="data",
    )
    sources: list[str] | None = option(None, "Shipped sources to read (unset: the DCR stage's defaults).", topic="data")
    text_column: str = option("text", "Prompt column of --data.", topic="data")
    label_column: str = option("label", "Label column of --data.", topic="data")
    harmful: str = option("toxic", "Label of truly harmful prompts.", topic="data")
    seemingly_harmful: str = option("seemingly_toxic", "Label of prompts that only look harmful.", topic="data")
    harmless: str = option("benign", "Label of plainly harmless prompts.", topic="data")
    val_fraction: float = option(
        0.1, "Share held out by text hash, as in the DCR stage; only the rest is read.", topic="data"
    )
    max_prompts: int | None = option(
        256, "At most this many prompts per class (a seeded draw). Unset: all.", topic="data"
    )
    seed: int = option(0, "Seed of the draw of prompts.", topic="data")
    batch_size: int = option(16, "Prompts per forward.", topic="data")
    output_dir: str = option(
        "runs/ablate", "Folder for model/ (the edited model) and directions.safetensors.", topic="output"
    )
    progress: bool = option(True, "Show progress.", topic="output")

    def checks(self) -> dict[str, bool]:
        return {
            **super().checks(),
            "coefficient": 0.0 <= self.coefficient <= 1.0,
            "val_fraction": 0.0 <= self.val_fraction < 1.0,
            "max_prompts": self.max_prompts is None or self.max_prompts >= 1,
            "batch_size": self.batch_size >= 1,
            "max_length": self.max_length >= 1,
        }
