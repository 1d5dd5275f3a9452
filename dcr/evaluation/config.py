"""Settings of `dcr evaluate` (and of the pipeline's evaluation steps)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dcr.config import ConfigError, Settings, option
from dcr.prompts.eval_sets import DEFAULT_SETS, SETS, parse_user_set, resolve_sets


def check_judge(name: str) -> str:
    """``name`` if it can be a judge (cues, default or an existing folder), else a `ConfigError` that says so."""
    if name not in ("cues", "default") and not Path(name).is_dir():
        raise ConfigError(f"judge {name!r} is neither cues, default nor a model folder")
    return name


@dataclass
class EvaluateConfig(Settings):
    """Everything `dcr evaluate` needs."""

    model: str = option(
        "default",
        "Model to evaluate: a local Hugging Face causal-LM folder, or 'default' for the embedded "
        "SmolLM2-135M-Instruct.",
        topic="model",
    )
    name: str | None = option(None, "Label of the model in the report. Unset: the model folder's name.", topic="model")
    device: str = option("auto", "Device: auto (CUDA if available), cpu, cuda, cuda:1, ...", topic="model")
    dtype: str = option(
        "auto",
        "Weights dtype (as --dtype of refine and align): auto (bf16 on CUDA, fp32 on CPU), bf16, fp16 or fp32.",
        ("auto", "bf16", "fp16", "fp32"),
        "model",
    )
    threads: int | None = option(
        None,
        "CPU threads for torch (unset: torch's choice); on a CPU shared with other jobs, 1 avoids thread "
        "oversubscription, which slows decoding many-fold.",
        topic="model",
    )
    sets: list[str] = option(
        list(DEFAULT_SETS),
        f"Generation sets: shipped ({' '.join(SETS)}) or your own files, [NAME=]PATH[:TEXT_COLUMN[:EXPECT_COLUMN]] "
        "(CSV, JSONL, JSON, Parquet or a datasets folder; columns default to prompt and expect, whose values say "
        "comply or refuse; NAME, the report's name, defaults to the file's stem).",
        topic="behaviour",
    )
    limit: int | None = option(
        None, "At most this many prompts per set, evenly spread (quick runs). Unset: every prompt.", topic="behaviour"
    )
    max_new_tokens: int = option(48, "Response length; a refusal shows in the first sentence.", topic="behaviour")
    batch_size: int = option(16, "Prompts per generation batch.", topic="behaviour")
    judge: str = option(
        "cues",
        "Refusal judge: cues (the weighted-cue detector, fast), a trained judge's folder (dcr train-judge) or a "
        "local chat-model folder ('default': the embedded model) that classifies each response with XSTest's "
        "rubric; docs/evaluation.md gives their measured accuracy.",
        topic="behaviour",
    )
    representation: bool = option(
        True, "Layer-l separation of XSTest unsafe vs safe prompts, with a 2-D projection plot.", topic="representation"
    )
    layer: int | float = option(
        0.5,
        "Layer l of the representation metrics: an index 1..depth or a fraction of the depth.",
        topic="representation",
    )
    pooling: str = option("last", "Token states to one vector.", ("last", "mean"), "representation")
    perplexity: bool = option(True, "Perplexity of held-out reference answers (an ability proxy).", topic="ability")
    perplexity_limit: int | None = option(
        None, "At most this many answers for the perplexity proxy. Unset: limit.", topic="ability"
    )
    output_dir: str = option(
        "runs/eval", "Folder for results.json, completions.jsonl, report.md and projection.png.", topic="output"
    )
    progress: bool = option(True, "Show progress bars.", topic="output")

    def checks(self) -> dict[str, bool]:
        positive = lambda v: v is None or v >= 1  # noqa: E731
        return {
            **super().checks(),
            "limit": positive(self.limit),
            "max_new_tokens": self.max_new_tokens >= 1,
            "batch_size": self.batch_size >= 1,
            "perplexity_limit": positive(self.perplexity_limit),
            "threads": positive(self.threads),
        }

    def validate(self) -> EvaluateConfig:
        super().validate()
        unknown = [s for s in self.sets if s not in SETS and not Path(parse_user_set(s)[1]).exists()]
        if unknown or not self.sets:
            raise ConfigError(
                f"unknown or empty sets {unknown or self.sets}: neither shipped sets ({' '.join(SETS)}) nor existing "
                "files ([NAME=]PATH[:TEXT_COLUMN[:EXPECT_COLUMN]])"
            )
        resolve_sets(self.sets, self.limit)  # a malformed user set is refused here, before any model loads
        check_judge(self.judge)
        return self


@dataclass
class RejudgeConfig(Settings):
    """Everything `dcr rejudge` needs."""

    judge: str = option(
        "cues",
        "Refusal judge: cues (the weighted-cue detector), a trained judge's folder (dcr train-judge) or a local "
        "chat-model folder ('default': the embedded model) that classifies each response with XSTest's rubric.",
        topic="behaviour",
    )
    device: str = option("auto", "Device of a judge model: auto (CUDA if available), cpu, cuda, ...", topic="model")
    output_dir: str = option(
        "runs/eval",
        "The finished evaluation's folder (the --output-dir of dcr evaluate), rewritten in place.",
        topic="output",
    )
    progress: bool = option(True, "Show a progress bar over the sets.", topic="output")

    def validate(self) -> RejudgeConfig:
        super().validate()
        check_judge(self.judge)
        return self


@dataclass
class TrainJudgeConfig(Settings):
    """Everything `dcr train-judge` needs."""

    labels: list[str] | None = option(
        None,
        "JSONL files of labelled responses, one {prompt, response, label} per line, label refusal or compliance "
        "(the labelling rule of dcr/data/refusal_labels/README.md). Unset: the shipped labelled responses.",
        topic="data",
    )
    exclude_families: list[str] | None = option(
        None,
        "Model families of the shipped labels to leave out (their 'family' names, e.g. \"Claude (Anthropic)\"), "
        "to score the judge on them afterwards.",
        topic="data",
    )
    encoder: str | None = option(
        None, "Encoder folder to fine-tune (a BERT-like Hugging Face model). Unset: all-MiniLM-L6-v2.", topic="model"
    )
    epochs: int = option(3, "Passes over the labelled responses.", topic="optimization")
    lr: float = option(5e-5, "AdamW learning rate (linear decay after 10% warm-up).", topic="optimization")
    batch_size: int = option(16, "Responses per step.", topic="optimization")
    max_length: int = option(192, "Tokens of prompt plus response the encoder reads.", topic="optimization")
    seed: int = option(0, "Seed of the classifier head's initialisation and the batch order.", topic="optimization")
    output_dir: str = option("runs/judge", "Where the judge folder is written (atomically).", topic="output")
    progress: bool = option(True, "Show a progress bar over the steps.", topic="output")

    def checks(self) -> dict[str, bool]:
        return {
            **super().checks(),
            "epochs": self.epochs >= 1,
            "lr": self.lr > 0,
            "batch_size": self.batch_size >= 1,
            "max_length": self.max_length >= 16,
        }

    def validate(self) -> TrainJudgeConfig:
        super().validate()
        missing = [p for p in self.labels or () if not Path(p).is_file()]
        if missing:
            raise ConfigError(f"labels file(s) not found: {', '.join(missing)}")
        if self.encoder is not None and not Path(self.encoder).is_dir():
            raise ConfigError(f"encoder {self.encoder!r} is not a model folder")
        return self
