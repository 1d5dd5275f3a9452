"""The `dcr` commands: each names its settings class, an example, and what it runs with the resolved settings."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dcr.ablation.config import AblateConfig
from dcr.evaluation.config import EvaluateConfig, RejudgeConfig, TrainJudgeConfig
from dcr.pipeline.config import PipelineConfig, SweepConfig
from dcr.planning.config import PlanConfig
from dcr.training.align_config import AlignConfig
from dcr.training.refine_config import RefineConfig

# deferred imports: each command imports its stage when it runs, so `dcr --help` and `--print-config` start
# without loading transformers, datasets or the kernels.


@dataclass(frozen=True)
class Command:
    summary: str
    description: str
    example: str
    settings: type
    run: Callable[[Any], str]  # runs the resolved settings; returns the line printed at the end
    renamed: tuple[tuple[str, str], ...] = ()  # (old flag, what to use instead): refused with that advice


def _refine(config: RefineConfig) -> str:
    from dcr.training.refine import refine

    return f"refined model saved to {refine(config)}"


def _align(config: AlignConfig) -> str:
    from dcr.training.align import align

    return f"aligned model saved to {align(config)}"


def _ablate(config: AblateConfig) -> str:
    from dcr.ablation.ablate import ablate

    return f"edited model saved to {ablate(config)}"


def _evaluate(config: EvaluateConfig) -> str:
    from dcr.evaluation.evaluate import evaluate_model

    results = evaluate_model(config)
    lines = [f"{key}: {value:.4f}" for key, value in results["summary"].items()]
    return "\n".join([*lines, f"report written to {Path(config.output_dir) / 'report.md'}"])


def _rejudge(config: RejudgeConfig) -> str:
    from dcr.evaluation.rejudge import rejudge
    from dcr.modeling.runtime import pick_device

    results = rejudge(config.output_dir, config.judge, device=pick_device(config.device), progress=config.progress)
    lines = [f"{key}: {value:.4f}" for key, value in results["summary"].items()]
    return "\n".join([*lines, f"report rewritten in {Path(config.output_dir) / 'report.md'}"])


def _train_judge(config: TrainJudgeConfig) -> str:
    from dcr.evaluation.encoder_judge import TrainSettings, read_labels, train_encoder_judge

    rows = read_labels(config.labels or (), exclude_families=config.exclude_families or ())
    settings = TrainSettings(
        epochs=config.epochs, lr=config.lr, batch_size=config.batch_size, max_length=config.max_length, seed=config.seed
    )
    path = train_encoder_judge(
        rows, config.output_dir, encoder=config.encoder, settings=settings, progress=config.progress
    )
    return f"judge trained on {len(rows)} responses saved to {path}; use it with --judge {path}"


def _pipeline(config: PipelineConfig) -> str:
    from dcr.pipeline.run import run_pipeline

    return _run_and_report(run_pipeline, config, second_judge=config.second_judge)


def _sweep(config: SweepConfig) -> str:
    from dcr.pipeline.sweep import run_sweep

    return _run_and_report(run_sweep, config, vary=config.vary)


def _run_and_report(run: Callable[..., dict], config: PipelineConfig, **extra: Any) -> str:
    """Run the pipeline or the sweep with the resolved settings; its report, and where it was written."""
    result = run(
        config.model,
        config.output_dir,
        config.profile,
        seeds=config.seeds,
        overrides=config.overrides(),
        device=config.device,
        progress=config.progress,
        fsdp=config.fsdp,
        **extra,
    )
    report = result["paths"]["report"]
    return f"{report.read_text()}\nreport written to {report}"


def _plan(config: PlanConfig) -> str:
    from dcr.planning.table import render

    return render(config)


COMMANDS = {
    "refine": Command(
        "the DCR stage: contrastive refinement at layer l",
        "DCR stage: contrastive refinement of a causal LM at layer l, the layers above l frozen. The defaults are "
        "the recommended setting (matched twins, centred Circle loss at the middle layer).",
        "dcr refine --steps 30 --batch-size 32 --output-dir runs/dcr",
        RefineConfig,
        _refine,
    ),
    "align": Command(
        "the alignment stage: SFT on benign answers and refusals",
        "Alignment stage: supervised fine-tuning on benign (prompt, answer) pairs plus (harmful prompt, refusal) "
        "pairs, loss on response tokens only, with an optional contrastive retention term at layer l.",
        "dcr align --model runs/dcr/model --refusal-share 0.05 --output-dir runs/align",
        AlignConfig,
        _align,
    ),
    "ablate": Command(
        "remove a false-refusal direction from a model's weights (training-free)",
        "Estimate the refusal direction (harmful minus harmless) and the false-refusal direction (seemingly "
        "harmful minus harmless, made orthogonal to the refusal direction) from the mean layer-l states of the "
        "DCR stage's training prompts, and project the latter out of every matrix that writes into the residual "
        "stream (single-vector ablation; --coefficient below 1 for partial ablation). Writes model/ and "
        "directions.safetensors.",
        "dcr ablate --model runs/align/model --layer 0.5 --output-dir runs/ablate",
        AblateConfig,
        _ablate,
    ),
    "evaluate": Command(
        "refusal behaviour, layer-l separation and perplexity of a model",
        "Evaluate refusal behaviour (greedy generation on held-out sets, judged by the refusal detector), layer-l "
        "separation of XSTest unsafe vs safe prompts (with a projection plot) and answer perplexity; writes "
        "results.json, completions.jsonl, report.md and projection.png.",
        "dcr evaluate --model runs/align/model --sets xstest_safe xstest_unsafe --limit 40 --output-dir runs/eval",
        EvaluateConfig,
        _evaluate,
        (("--precision", "--dtype (the weights' dtype; --precision is autocast in refine and align)"),),
    ),
    "rejudge": Command(
        "re-score a finished evaluation with another refusal judge",
        "Judge the completions of a finished `dcr evaluate` folder again with another refusal judge, without "
        "generating again; rewrites results.json, completions.jsonl and report.md (representation and perplexity "
        "results are kept).",
        "dcr rejudge --output-dir runs/eval --judge path/to/judge-model",
        RejudgeConfig,
        _rejudge,
    ),
    "train-judge": Command(
        "fine-tune a small encoder as a refusal judge on labelled responses",
        "Fine-tune a sentence encoder (all-MiniLM-L6-v2 by default) to classify (prompt, response) pairs as refusal "
        "or compliance, on the shipped labelled responses or your own; the folder it writes is a judge for "
        "evaluate, rejudge and the pipeline (--judge DIR). docs/evaluation.md scores it leave one family out.",
        "dcr train-judge --output-dir runs/judge",
        TrainJudgeConfig,
        _train_judge,
    ),
    "plan": Command(
        "per-GPU memory of a stage: full, LoRA, FSDP, FSDP + LoRA",
        "Plan a stage's memory before starting it, from the model's configuration alone: per-GPU weights, "
        "gradients, AdamW state, FSDP's gathered layers, activations at the micro-batch and the contrastive "
        "loss's O(B D), for full training, LoRA, FSDP and FSDP with LoRA, and the largest contrastive batch "
        "that fits (docs/multi_gpu.md).",
        "dcr plan --model llama-3-8b --layer 16 --gpus 8 --gpu-memory 80GB",
        PlanConfig,
        _plan,
    ),
    "pipeline": Command(
        "base vs alignment only vs DCR vs the data-side fix, evaluated and compared",
        "From one base model, run (a) alignment only, (b) the DCR stage then alignment, (c) alignment with more "
        "seemingly toxic prompts answered helpfully and (d) DCR then (c), with the same seeds and budget; evaluate "
        "the base and every arm; write report.md, comparison.json and comparison.png. A rerun skips finished "
        "steps and re-judges finished evaluations when only the judge changed.",
        "dcr pipeline --profile quick --output-dir runs/pipeline",
        PipelineConfig,
        _pipeline,
    ),
    "sweep": Command(
        "the DCR stage's layer, loss and data varied one at a time, with intervals",
        "Vary the DCR stage's settings one at a time around the profile's (by default the layer at a quarter, half "
        "and three quarters of the depth, the loss Circle / SupCon / InfoNCE, the data twins / public sets); run "
        "each as arm (b) with the profile's alignment, evaluation and seeds, beside arm (a); write sweep.md and "
        "sweep.json with each variant's XSTest discernment and its paired 95% intervals against (a) and (b). In a "
        "finished pipeline's folder it reuses that pipeline's arms (a) and (b).",
        "dcr sweep --profile quick --output-dir runs/pipeline",
        SweepConfig,
        _sweep,
    ),
}
