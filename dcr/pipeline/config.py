"""Settings of `dcr pipeline`: a profile, the model and run folder, and optional per-stage overrides."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dcr.config import ConfigError, Settings, option
from dcr.evaluation.config import check_judge
from dcr.pipeline.profiles import PROFILES, SECTIONS


@dataclass
class PipelineConfig(Settings):
    """Everything `dcr pipeline` needs. The sections `refine`, `align`, `data_side`, `ablate` and `evaluate`
    (config file only) override the profile's settings of that stage, with the keys of `dcr refine`,
    `dcr align` (also for `data_side`, the alignment settings of arms (c) and (d)), `dcr ablate` and
    `dcr evaluate`."""

    profile: str = option(
        "quick",
        "quick: a 2-core CPU with the default model; paper: the DCR paper's protocol (XSTest safe vs HH-RLHF harmful "
        "prompts in the DCR stage) at the quick size; full: a GPU and a bigger model.",
        tuple(PROFILES),
        "pipeline",
    )
    model: str = option(
        "default",
        "Base model: a local Hugging Face causal-LM folder, or 'default' for the embedded SmolLM2-135M-Instruct.",
        topic="pipeline",
    )
    seeds: list[int] | None = option(
        None, "Seeds of the DCR and alignment stages. Unset: the profile's.", topic="pipeline"
    )
    device: str = option("auto", "Device: auto (CUDA if available), cpu, cuda, cuda:1, ...", topic="pipeline")
    fsdp: bool = option(
        False,
        "Under torchrun / accelerate launch: shard the decoder layers of every training stage over the ranks "
        "(FSDP2; see `dcr refine --help`).",
        topic="pipeline",
    )
    second_judge: str | None = option(
        None,
        "A second refusal judge (a trained judge's folder from dcr train-judge, or a chat-model folder): the report "
        "adds every model's refusal rates by it beside the run's judge, from the same completions.",
        topic="pipeline",
    )
    output_dir: str = option("runs/pipeline", "Run folder; a rerun skips finished steps.", topic="output")
    progress: bool = option(True, "Show progress bars.", topic="output")
    refine: dict[str, Any] = option({}, "Overrides of the profile's DCR-stage settings.", topic="sections")
    align: dict[str, Any] = option({}, "Overrides of the profile's alignment settings.", topic="sections")
    data_side: dict[str, Any] = option(
        {}, "Overrides of the alignment settings of arms (c) and (d), the data-side fix.", topic="sections"
    )
    ablate: dict[str, Any] = option(
        {}, "Overrides of arm (e)'s settings (dcr ablate: the training-free ablation of (a)'s model).", topic="sections"
    )
    evaluate: dict[str, Any] = option({}, "Overrides of the profile's evaluation settings.", topic="sections")

    def validate(self) -> PipelineConfig:
        super().validate()
        if self.second_judge is not None:
            check_judge(self.second_judge)
        for section in SECTIONS:
            if not all(isinstance(k, str) for k in getattr(self, section)):
                raise ConfigError(f"the {section} section must map setting names to values")
        return self

    def overrides(self) -> dict[str, dict[str, Any]]:
        return {section: getattr(self, section) for section in SECTIONS if getattr(self, section)}


@dataclass
class SweepConfig(PipelineConfig):
    """Everything `dcr sweep` needs: a pipeline's settings, so that one config file serves both and a sweep in
    a pipeline's folder reuses its arms (a) and (b) (the sweep runs no data-side arm or ablation, so it does
    not use those sections), and the DCR-stage settings to vary."""

    output_dir: str = option("runs/sweep", "Run folder; a rerun skips finished steps.", topic="output")
    vary: dict[str, Any] | None = option(
        None,
        "DCR-stage settings to vary one at a time (config file only), each a list of values, e.g. {layer: [0.25, "
        "0.75], loss: [supcon]}. Unset: layer 0.25/0.5/0.75, loss circle/supcon/infonce, sources twins/public sets.",
        topic="sections",
    )

    def validate(self) -> SweepConfig:
        if self.second_judge is not None:
            raise ConfigError(
                "dcr sweep has no second judge: judge the finished folders with scripts/compare_judges.py"
            )
        super().validate()
        return self
