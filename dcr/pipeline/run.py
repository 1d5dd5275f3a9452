"""`dcr pipeline`: from one base model, five arms, all evaluated with the base model.

(a) alignment only; (b) DCR then the same alignment; (c) the data-side fix instead of DCR: alignment whose mix
gives a larger share to contrast pairs (seemingly toxic prompts answered helpfully; the profile's
``data_side`` settings); (d) DCR then (c)'s alignment; (e) the training-free rival: (a)'s model with the
false-refusal direction ablated from its weights (`dcr ablate`, directions from the DCR stage's training
prompts). Every trained arm has the same seeds and alignment step budget, so (a)/(b) and (c)/(d) differ only
in the DCR stage, (a)/(c) and (b)/(d) only in the data, and (e)/(a) only in the ablation. Every step
writes into its own folder and finishes by writing ``DONE.json`` there (atomically, last), so a rerun skips
finished steps, resumes unfinished training from its checkpoints, re-judges a finished evaluation from its
completions when only the refusal judge changed, and refuses a finished step whose other settings have since
changed. The comparison (table, JSON, plot) is rewritten at the end of every run.

Under `torchrun` or `accelerate launch` every rank runs the same steps (each stage shares its work over the
ranks); rank 0 alone logs, writes the markers and the comparison, and every rank decides what to skip from the
same markers, so the ranks stay in step.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from dcr.ablation.ablate import ablate
from dcr.ablation.config import AblateConfig
from dcr.config import ConfigError, from_mapping
from dcr.evaluation.config import EvaluateConfig
from dcr.evaluation.evaluate import evaluate_model
from dcr.evaluation.judge import CUES
from dcr.evaluation.rejudge import rejudge
from dcr.modeling.ranks import start
from dcr.modeling.runtime import bf16_is_slow, pick_device
from dcr.pipeline.intervals import load_outcomes
from dcr.pipeline.judges import compare_judges
from dcr.pipeline.profiles import SECTIONS, fp32_where_bf16_is_slow, profile
from dcr.pipeline.report import FILES, write_comparison
from dcr.prompts.eval_sets import resolve_sets
from dcr.prompts.sets import load_labelled
from dcr.prompts.sources import DCR_HH_SOURCE
from dcr.prompts.tables import normalise
from dcr.run_lock import claim
from dcr.training.align import align
from dcr.training.align_config import AlignConfig
from dcr.training.loop import trajectory_settings
from dcr.training.refine import refine
from dcr.training.refine_config import RefineConfig

MARKER = "DONE.json"
ARMS = {
    "align-only": "(a) alignment only",
    "dcr-align": "(b) DCR + alignment",
    "data-align": "(c) alignment with more contrast pairs",
    "dcr-data-align": "(d) DCR + (c)'s alignment",
}
ABLATION = "(e) (a) + false-refusal ablation"  # arm (e): not trained, (a)'s model edited
DCR_ARMS = ("dcr-align", "dcr-data-align")
DATA_ARMS = ("data-align", "dcr-data-align")
BASE_LABEL = "base"


def is_done(folder: Path) -> bool:
    """Whether the step in ``folder`` finished (its completion marker exists)."""
    return (folder / MARKER).is_file()


def _write_marker(folder: Path, record: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".done-", dir=folder)
    with os.fdopen(fd, "w") as f:
        json.dump(record, f, indent=2)
    os.replace(tmp, folder / MARKER)


def _plain(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Settings as a marker stores them (JSON types)."""
    return json.loads(json.dumps(settings))


def _finished_with_another_judge(folder: Path, settings: Mapping[str, Any]) -> dict[str, Any] | None:
    """The marker's record when the evaluation step in ``folder`` finished with settings that differ from
    ``settings`` in the refusal judge alone (its completions can be judged again), else None."""
    if not is_done(folder):
        return None
    record = json.loads((folder / MARKER).read_text())
    old, new = dict(record["settings"]), _plain(settings)
    if old == new:
        return None
    old.pop("judge", None)
    new.pop("judge", None)
    return record if old == new else None


def run_step(
    folder: Path,
    settings: Mapping[str, Any],
    work: Callable[[], dict[str, Any]],
    log: Callable[[str], None] = print,
    *,
    main: bool = True,
) -> dict[str, Any]:
    """Run ``work`` unless ``folder`` holds a marker for the same ``settings``; return the marker's record.
    Only the ``main`` process logs and writes the marker (``work`` runs on every process)."""
    if not main:
        log = _silent
    settings = _plain(settings)
    if is_done(folder):
        record = json.loads((folder / MARKER).read_text())
        if record["settings"] != settings:
            changed = sorted(
                k for k in set(record["settings"]) | set(settings) if record["settings"].get(k) != settings.get(k)
            )
            raise ConfigError(f"{folder} finished with other settings ({changed}); use another output folder")
        log(f"[skip] {folder} (finished)")
        return record
    log(f"[run] {folder}")
    tic = time.perf_counter()
    result = work()
    record = {"settings": settings, "seconds": time.perf_counter() - tic, "finished": time.time(), **result}
    if main:
        _write_marker(folder, record)
    return record


def _silent(message: str) -> None:
    """The log of a process other than rank 0."""


def _evaluate(
    model_path: str, out: Path, name: str, options: Mapping[str, Any], layer: int | float, device: str, progress: bool
) -> dict[str, Any]:
    config = from_mapping(
        EvaluateConfig,
        {
            **options,
            "model": model_path,
            "output_dir": str(out),
            "name": name,
            "layer": layer,
            "device": device,
            "progress": progress,
        },
    )
    return {"summary": evaluate_model(config.validate())["summary"]}


def evaluation_step(
    folder: Path,
    model_path: str,
    name: str,
    options: Mapping[str, Any],
    layer: int | float,
    ranks: Any,
    device: str,
    progress: bool,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """Evaluate ``model_path`` into ``folder`` as a step (skipped when finished; judged again from its
    completions when only the refusal judge changed); return the marker's record."""
    step = {"model": model_path, "layer": layer, **options}
    finished = _finished_with_another_judge(folder, step)
    if finished is not None:
        if ranks.main:
            log(f"[rejudge] {folder}")
            results = rejudge(folder, step.get("judge", CUES), device=pick_device(device))
            _write_marker(folder, {**finished, "settings": _plain(step), "summary": results["summary"]})
        ranks.barrier()  # every rank reads the new marker
    return run_step(
        folder,
        step,
        lambda: _evaluate(model_path, folder, name, options, layer, device, progress),
        log,
        main=ranks.main,
    )


def resolve(
    profile_name: str,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    seeds: list[int] | None = None,
    *,
    device: str = "auto",
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """The profile with per-stage ``overrides`` applied (and ``seeds`` if given). On a CPU without bf16
    instructions the profile's own bf16 settings become fp32 ones (said in the log)."""
    settings = profile(profile_name)
    for section, values in (overrides or {}).items():
        if section not in SECTIONS:
            raise ConfigError(f"unknown pipeline section {section!r}; use one of {', '.join(SECTIONS)}")
        settings[section].update(values)
    if seeds:
        settings["seeds"] = list(seeds)
    if bf16_is_slow(pick_device(device)):
        changed = fp32_where_bf16_is_slow(settings, overrides or {})
        if changed:
            slow = "this CPU has no bf16 instructions, so bf16 would be slower than fp32"
            log(f"[profile] {slow}: fp32 for {', '.join(changed)}")
    return settings


def run_pipeline(
    model: str = "default",
    output_dir: str | Path = "runs/pipeline",
    profile_name: str = "quick",
    *,
    seeds: list[int] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    device: str = "auto",
    progress: bool = True,
    fsdp: bool = False,
    second_judge: str | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run (or finish) the pipeline; return ``{label: summary}`` of every evaluated model and the report paths.

    ``fsdp`` shards the training stages' decoder layers over the launcher's ranks; ``second_judge`` adds every
    model's refusal rates by that judge to the report (`dcr.pipeline.judges`)."""
    ranks, _ = start(device)  # joins the launcher's process group, if there is one
    out = Path(output_dir)
    settings = resolve(profile_name, overrides, seeds, device=device, log=log)
    layer = settings["refine"].get("layer", 0.5)
    check_evaluate(settings["evaluate"])
    common = {"model": model, "device": device, "progress": progress, **({"fsdp": True} if fsdp else {})}
    evaluated: dict[str, dict[str, Any]] = {}
    tic = time.perf_counter()

    folders: dict[str, Path] = {}

    def evaluation(folder: Path, model_path: str, name: str) -> dict[str, Any]:
        folders[name] = folder
        return evaluation_step(folder, model_path, name, settings["evaluate"], layer, ranks, device, progress, log)

    with claim(out, ranks):  # the pipeline folder is this run's until it ends (dcr.run_lock)
        plan = {seed: stage_configs(settings, common, out / f"seed-{seed}", seed, layer) for seed in settings["seeds"]}
        evaluated[BASE_LABEL] = evaluation(out / "base" / "eval", model, BASE_LABEL)
        for seed, (refine_cfg, align_cfgs) in plan.items():
            root = out / f"seed-{seed}"
            refined = run_step(
                root / "dcr",
                trajectory_settings(refine_cfg),
                lambda c=refine_cfg: {"model": str(refine(resumable(c)))},
                log,
                main=ranks.main,
            )
            for arm, cfg in align_cfgs.items():
                if arm in DCR_ARMS:
                    cfg = dataclasses.replace(cfg, model=refined["model"])
                aligned = run_step(
                    root / arm,
                    trajectory_settings(cfg),
                    lambda c=cfg: {"model": str(align(resumable(c)))},
                    log,
                    main=ranks.main,
                )
                label = f"{ARMS[arm]}, seed {seed}"
                evaluated[label] = evaluation(root / f"eval-{arm}", aligned["model"], label)
                if arm == "align-only":
                    cfg_e = _ablate_config(settings, aligned["model"], root / "ablate", seed, layer, device, progress)
                    ablated = run_step(
                        root / "ablate",
                        {k: v for k, v in dataclasses.asdict(cfg_e).items() if k not in ("progress", "output_dir")},
                        lambda c=cfg_e: {"model": str(ablate(c))},
                        log,
                        main=ranks.main,
                    )
                    label = f"{ABLATION}, seed {seed}"
                    evaluated[label] = evaluation(root / "eval-ablate", ablated["model"], label)
        if ranks.main:
            judges = None
            if second_judge is not None:
                log(f"[judge] every evaluation's completions by {second_judge}")
                table = compare_judges(folders, second_judge, device=pick_device(device))
                judges = (settings["evaluate"].get("judge", CUES), second_judge, table)
            paths = write_comparison(
                out,
                {k: v["summary"] for k, v in evaluated.items()},
                settings,
                seconds=time.perf_counter() - tic,
                seen=dcr_overlap(plan[settings["seeds"][0]][0], settings["evaluate"]),
                outcomes={label: load_outcomes(folder) for label, folder in folders.items() if label != BASE_LABEL},
                judges=judges,
            )
        ranks.barrier()  # the comparison is written before any rank returns its paths
        if not ranks.main:
            paths = {k: out / v for k, v in FILES.items() if (out / v).exists()}
        return {"summaries": {k: v["summary"] for k, v in evaluated.items()}, "paths": paths}


def stage_configs(
    settings: Mapping[str, Any], common: Mapping[str, Any], root: Path, seed: int, layer: int | float
) -> tuple[RefineConfig, dict[str, AlignConfig]]:
    """Validated configs of one seed's DCR stage and the four alignment arms (the DCR arms' model is set later).

    HH-RLHF prompts the DCR stage draws are reserved: no arm's alignment mix holds them."""
    refine_cfg = from_mapping(
        RefineConfig, {**settings["refine"], **common, "seed": seed, "output_dir": str(root / "dcr")}
    ).validate()
    reserved = [s for s in refine_cfg.sources or () if s == DCR_HH_SOURCE] if refine_cfg.data is None else []
    align_cfgs = {
        arm: from_mapping(
            AlignConfig,
            {
                **settings["align"],
                **(settings["data_side"] if arm in DATA_ARMS else {}),
                **common,
                **({"reserved_sources": reserved} if reserved else {}),
                "seed": seed,
                "retention_layer": settings["align"].get("retention_layer", layer),
                "output_dir": str(root / arm),
            },
        ).validate()
        for arm in ARMS
    }
    return refine_cfg, align_cfgs


def _ablate_config(
    settings: Mapping[str, Any], model: str, folder: Path, seed: int, layer: int | float, device: str, progress: bool
) -> AblateConfig:
    """Arm (e)'s settings: the profile's ablate section, with the DCR stage's layer, pooling, chat template,
    prompt data and split unless it names its own; harmless prompts come from Self-Instruct when the DCR
    stage's shipped sources hold none (the matched twins, the paper's data)."""
    refine = settings["refine"]
    shared = {k: refine[k] for k in ("pooling", "chat_template", "val_fraction", "data", "text_column",
                                     "label_column") if k in refine}  # fmt: skip
    if refine.get("data") is None and refine.get("sources"):
        shared["sources"] = list(dict.fromkeys([*refine["sources"], "self_instruct"]))
    values = {"layer": layer, **shared, **settings["ablate"], "model": model, "seed": seed, "device": device}
    return from_mapping(AblateConfig, {**values, "progress": progress, "output_dir": str(folder)}).validate()


def dcr_overlap(refine_cfg: RefineConfig, evaluate: Mapping[str, Any]) -> dict[str, float]:
    """Per evaluated set, the share of its prompts that the DCR stage trained on (0: held out)."""
    trained, _ = load_labelled(
        refine_cfg.data,
        classes=refine_cfg.classes,
        text_column=refine_cfg.text_column,
        label_column=refine_cfg.label_column,
        sources=refine_cfg.sources,
    )
    keys = {normalise(t) for t in trained["text"]}
    return {
        name: sum(normalise(r["text"]) in keys for r in rows) / len(rows)
        for name, _, rows in resolve_sets(list(evaluate.get("sets", ())), evaluate.get("limit"))
    }


def check_evaluate(options: Mapping[str, Any]) -> None:
    fixed = {"model", "output_dir", "name", "layer", "device", "progress"}  # set by the pipeline
    allowed = {f.name for f in dataclasses.fields(EvaluateConfig)} - fixed
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ConfigError(f"unknown evaluate setting(s) {unknown}; valid settings: {sorted(allowed)}")


def resumable(config: Any) -> Any:
    """The config with resume on: an unfinished step continues from its newest checkpoint."""
    return dataclasses.replace(config, resume=True)
