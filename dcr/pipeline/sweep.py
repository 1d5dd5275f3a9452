"""`dcr sweep`: the DCR stage's settings varied one at a time around a profile's, each scored as arm (b).

Every variant runs the DCR stage with one setting changed, then the profile's alignment (its retention term
at the variant's layer), then the profile's evaluation, with the profile's seeds; arm (a), alignment only,
and arm (b) at the profile's own setting run beside them. The report gives each variant's XSTest discernment
per seed and its seed-paired contrasts with (a) and with (b), with 95% intervals from the paired bootstrap
over prompts and seeds (`dcr.pipeline.intervals`), and says in words which contrasts exclude zero.

The default sweep is the ablations the DCR paper lacks: the layer (a quarter, half and three quarters of
the depth), the loss (Circle, SupCon, InfoNCE) and the DCR data (the matched twins, the public sets). Arms
(a) and (b) use the pipeline's folders and settings, so a sweep in a finished pipeline's folder reuses them.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from dcr.config import ConfigError
from dcr.evaluation.report import discernment
from dcr.modeling.ranks import start
from dcr.pipeline.intervals import interval_tables, load_outcomes
from dcr.pipeline.report import by_seed, fmt_interval, intervals_section
from dcr.pipeline.run import (
    ARMS,
    check_evaluate,
    dcr_overlap,
    evaluation_step,
    resolve,
    resumable,
    run_step,
    stage_configs,
)
from dcr.run_lock import claim
from dcr.training.align import align
from dcr.training.align_config import AlignConfig
from dcr.training.loop import trajectory_settings
from dcr.training.refine import refine
from dcr.training.refine_config import RefineConfig

# setting of the DCR stage -> the values the sweep tries (None for sources: the shipped public sets)
DEFAULT_VARY: dict[str, list[Any]] = {
    "layer": [0.25, 0.5, 0.75],
    "loss": ["circle", "supcon", "infonce"],
    "sources": [["twins"], None],
}
BASELINE, PROFILE_SETTING = "(a)", "(b)"
FILES = {"report": "sweep.md", "json": "sweep.json"}


def _name(key: str, value: Any) -> str:
    if key == "sources":
        return "sources=" + ("public sets" if value is None else "+".join(value))
    return f"{key}={value}"


def _folder(name: str) -> str:
    """A variant's folder name: its name with every run of characters other than letters, digits, _ . +
    turned into one '-'."""
    return re.sub(r"[^A-Za-z0-9_.+]+", "-", name).strip("-")


def variants(profile_refine: Mapping[str, Any], vary: Mapping[str, Sequence[Any]]) -> dict[str, dict[str, Any]]:
    """Name -> the DCR-stage settings changed, one setting at a time; values equal to the profile's are left
    out (that is arm (b))."""
    out = {}
    for key, values in vary.items():
        if isinstance(values, str) or not isinstance(values, Sequence):
            raise ConfigError(f"vary: {key} must map to a list of values, got {values!r}")
        for value in values:
            if key == "sources" and isinstance(value, str):
                raise ConfigError(f"vary: each value of sources is a list of sources (or null), got {value!r}")
            if profile_refine.get(key) != value:
                out[_name(key, value)] = {key: value}
    return out


def _plan(
    settings: Mapping[str, Any], changes: Mapping[str, Mapping[str, Any]], common: Mapping[str, Any], out: Path
) -> dict[int, dict[str, tuple[Path, RefineConfig | None, AlignConfig]]]:
    """Per seed, every arm's folder and validated stage configs (None: no DCR stage), before anything runs.

    A variant's alignment leaves out the HH-RLHF prompts that its own or the profile's DCR stage trains on, so
    it sees the data of (b) unless the variant itself trains on prompts (b)'s alignment holds."""
    plan = {}
    for seed in settings["seeds"]:
        root = out / f"seed-{seed}"
        refine_cfg, align_cfgs = stage_configs(settings, common, root, seed, settings["refine"].get("layer", 0.5))
        arms = {
            BASELINE: (root, None, align_cfgs["align-only"]),
            PROFILE_SETTING: (root, refine_cfg, align_cfgs["dcr-align"]),
        }
        for name, change in changes.items():
            varied = {**settings, "refine": {**settings["refine"], **change}}
            folder = out / "sweep" / _folder(name) / f"seed-{seed}"
            cfg, aligns = stage_configs(varied, common, folder, seed, varied["refine"].get("layer", 0.5))
            reserved = {
                *(align_cfgs["dcr-align"].reserved_sources or ()),
                *(aligns["dcr-align"].reserved_sources or ()),
            }
            aligned = dataclasses.replace(aligns["dcr-align"], reserved_sources=sorted(reserved) or None)
            arms[name] = (folder, cfg, aligned)
        plan[seed] = arms
    return plan


def run_sweep(
    model: str = "default",
    output_dir: str | Path = "runs/sweep",
    profile_name: str = "quick",
    *,
    vary: Mapping[str, Sequence[Any]] | None = None,
    seeds: list[int] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    device: str = "auto",
    progress: bool = True,
    fsdp: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run (or finish) the sweep; return ``{label: summary}`` of every evaluation and the report paths."""
    ranks, _ = start(device)
    out = Path(output_dir)
    settings = resolve(profile_name, overrides, seeds, device=device, log=log)
    layer = settings["refine"].get("layer", 0.5)
    check_evaluate(settings["evaluate"])
    changes = variants(settings["refine"], DEFAULT_VARY if vary is None else vary)
    common = {"model": model, "device": device, "progress": progress, **({"fsdp": True} if fsdp else {})}
    plan = _plan(settings, changes, common, out)
    labels = {BASELINE: ARMS["align-only"], PROFILE_SETTING: ARMS["dcr-align"], **{n: n for n in changes}}
    evaluated: dict[str, dict[str, Any]] = {}
    folders: dict[str, Path] = {}
    tic = time.perf_counter()
    with claim(out, ranks):
        for seed, arms in plan.items():
            for arm, (root, refine_cfg, align_cfg) in arms.items():
                if refine_cfg is not None:
                    refined = run_step(
                        root / "dcr", trajectory_settings(refine_cfg),
                        lambda c=refine_cfg: {"model": str(refine(resumable(c)))}, log, main=ranks.main,
                    )  # fmt: skip
                    align_cfg = dataclasses.replace(align_cfg, model=refined["model"])
                step = "align-only" if refine_cfg is None else "dcr-align"
                aligned = run_step(
                    root / step, trajectory_settings(align_cfg),
                    lambda c=align_cfg: {"model": str(align(resumable(c)))}, log, main=ranks.main,
                )  # fmt: skip
                label = f"{labels[arm]}, seed {seed}"
                folders[label] = root / f"eval-{step}"
                evaluated[label] = evaluation_step(
                    folders[label], aligned["model"], label, settings["evaluate"], layer, ranks, device, progress, log
                )
        if ranks.main:
            first = plan[settings["seeds"][0]]
            seen = {
                arm: dcr_overlap(cfg, settings["evaluate"]) for arm, (_, cfg, _) in first.items() if cfg is not None
            }
            paths = write_sweep(out, evaluated, folders, settings, changes, seen, time.perf_counter() - tic)
        ranks.barrier()
        if not ranks.main:
            paths = {k: out / v for k, v in FILES.items()}
        return {"summaries": {k: v["summary"] for k, v in evaluated.items()}, "paths": paths}


def write_sweep(
    out: Path,
    evaluated: Mapping[str, Mapping[str, Any]],
    folders: Mapping[str, Path],
    settings: Mapping[str, Any],
    changes: Mapping[str, Mapping[str, Any]],
    seen: Mapping[str, Mapping[str, float]],
    seconds: float,
) -> dict[str, Path]:
    """Write sweep.md and sweep.json: per variant, XSTest discernment per seed and its contrasts with (a) and
    (b) with 95% intervals, what its DCR stage trained on, then every rate's intervals."""
    arms = [(BASELINE, ARMS["align-only"]), (PROFILE_SETTING, ARMS["dcr-align"])] + [(n, n) for n in changes]
    contrasts = [(PROFILE_SETTING, BASELINE, "DCR vs none")]
    for name in changes:
        contrasts += [(name, BASELINE, "DCR vs none"), (name, PROFILE_SETTING, "vs the profile's setting")]
    tables = interval_tables({label: load_outcomes(f) for label, f in folders.items()}, arms, contrasts)
    summaries = {label: record["summary"] for label, record in evaluated.items()}
    per_seed = {
        prefix: {seed: discernment(s).get("XSTest", (None,))[0] for seed, s in by_seed(summaries, prefix).items()}
        for prefix, _ in arms
    }
    record = {
        "settings": settings,
        "variants": changes,
        "per_seed": per_seed,
        "intervals": tables,
        "dcr_stage_trained_on": seen,
        "seconds": seconds,
    }
    out.mkdir(parents=True, exist_ok=True)
    paths = {k: out / v for k, v in FILES.items()}
    paths["json"].write_text(json.dumps(record, indent=2) + "\n")
    paths["report"].write_text(render(arms, per_seed, tables, seen, settings, seconds))
    return paths


def render(
    arms: Sequence[tuple[str, str]],
    per_seed: Mapping[str, Mapping[str, float | None]],
    tables: Mapping[str, Mapping[str, Mapping[str, float]]],
    seen: Mapping[str, Mapping[str, float]],
    settings: Mapping[str, Any],
    seconds: float,
) -> str:
    """Markdown: one discernment row per arm or variant, then every rate's intervals, the settings, the time."""
    profile_refine = settings["refine"]
    metric = "XSTest discernment"
    sets = sorted({name for shares in seen.values() for name in shares})
    lines = [
        "# DCR sweep: the DCR stage's settings one at a time, each followed by the same alignment",
        "",
        f"Arm (b) is the profile's setting (layer {profile_refine.get('layer')}, loss {profile_refine.get('loss')}, "
        f"sources {profile_refine.get('sources') or 'public sets'}); every other row changes one of them. "
        "Discernment is XSTest safe compliance + XSTest unsafe refusal (0 to 2); intervals are 95%, from a paired "
        "bootstrap over prompts and seeds. The last columns give the share of each evaluated set that the row's DCR "
        "stage trained on (0: held out).",
        "",
        f"| arm | {metric}, per seed | mean [95%] | minus (a) [95%] | minus (b) [95%] | "
        + " | ".join(f"{n}: trained on" for n in sets)
        + " |",
        "|---|---|---|---|---|" + "---:|" * len(sets),
    ]
    for prefix, label in arms:
        values = sorted(per_seed.get(prefix, {}).items(), key=lambda kv: int(kv[0]))
        cells = [", ".join(f"{v:.3f}" for _, v in values if v is not None) or "-"]
        for key in (prefix, f"{prefix} - {BASELINE}", f"{prefix} - {PROFILE_SETTING}"):
            interval = tables.get(key, {}).get(metric)
            cells.append(fmt_interval(interval, signed=" - " in key) if interval else "-")
        cells += [f"{seen[prefix][n]:.2f}" if prefix in seen else "-" for n in sets]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", *intervals_section(tables)]
    lines += [f"Wall-clock time of this run: {seconds / 60:.1f} min (finished steps that were skipped count 0).", ""]
    lines += ["## Settings", "", "```json", json.dumps(settings, indent=2), "```", ""]
    return "\n".join(lines)
