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
from dcr.pipeline.report import fmt_interval, intervals_section
from dcr.pipeline.run import ARMS, check_evaluate, evaluation_step, resolve, resumable, run_step, stage_configs
from dcr.run_lock import claim
from dcr.training.align import align
from dcr.training.loop import trajectory_settings
from dcr.training.refine import refine

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


def variants(refine: Mapping[str, Any], vary: Mapping[str, Sequence[Any]]) -> dict[str, dict[str, Any]]:
    """Name -> the DCR-stage settings changed, one setting at a time; values equal to the profile's are left
    out (that is arm (b))."""
    out = {}
    for key, values in vary.items():
        if isinstance(values, str) or not isinstance(values, Sequence):
            raise ConfigError(f"vary: {key} must map to a list of values, got {values!r}")
        for value in values:
            if refine.get(key) != value:
                out[_name(key, value)] = {key: value}
    return out


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
    settings = resolve(profile_name, overrides, seeds)
    layer = settings["refine"].get("layer", 0.5)
    check_evaluate(settings["evaluate"])
    changes = variants(settings["refine"], DEFAULT_VARY if vary is None else vary)
    common = {"model": model, "device": device, "progress": progress, **({"fsdp": True} if fsdp else {})}
    evaluated: dict[str, dict[str, Any]] = {}
    folders: dict[str, Path] = {}
    tic = time.perf_counter()

    def arm(root: Path, arm_settings: Mapping[str, Any], seed: int, label: str, dcr: bool) -> None:
        """One seed of one arm: the DCR stage (if ``dcr``), the alignment and the evaluation, in ``root``."""
        arm_layer = arm_settings["refine"].get("layer", 0.5)
        refine_cfg, align_cfgs = stage_configs(arm_settings, common, root, seed, arm_layer)
        cfg = align_cfgs["dcr-align" if dcr else "align-only"]
        if dcr:
            refined = run_step(
                root / "dcr", trajectory_settings(refine_cfg), lambda: {"model": str(refine(resumable(refine_cfg)))},
                log, main=ranks.main,
            )  # fmt: skip
            cfg = dataclasses.replace(cfg, model=refined["model"])
        name = "dcr-align" if dcr else "align-only"
        aligned = run_step(
            root / name, trajectory_settings(cfg), lambda: {"model": str(align(resumable(cfg)))}, log, main=ranks.main
        )
        folder = root / f"eval-{name}"
        folders[f"{label}, seed {seed}"] = folder
        evaluated[f"{label}, seed {seed}"] = evaluation_step(
            folder, aligned["model"], f"{label}, seed {seed}", settings["evaluate"], layer, ranks, device, progress, log
        )

    with claim(out, ranks):
        for seed in settings["seeds"]:
            root = out / f"seed-{seed}"
            arm(root, settings, seed, ARMS["align-only"], dcr=False)
            arm(root, settings, seed, ARMS["dcr-align"], dcr=True)
            for name, change in changes.items():
                varied = {**settings, "refine": {**settings["refine"], **change}}
                arm(out / "sweep" / _folder(name) / f"seed-{seed}", varied, seed, name, dcr=True)
        if ranks.main:
            paths = write_sweep(out, evaluated, folders, settings, changes, time.perf_counter() - tic)
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
    seconds: float,
) -> dict[str, Path]:
    """Write sweep.md and sweep.json: per variant, XSTest discernment per seed and its contrasts with (a) and
    (b) with 95% intervals, then every rate's intervals."""
    arms = [(BASELINE, ARMS["align-only"]), (PROFILE_SETTING, ARMS["dcr-align"])] + [(n, n) for n in changes]
    contrasts = [(PROFILE_SETTING, BASELINE, "DCR vs none")]
    for name in changes:
        contrasts += [(name, BASELINE, "DCR vs none"), (name, PROFILE_SETTING, "vs the profile's setting")]
    tables = interval_tables({label: load_outcomes(f) for label, f in folders.items()}, arms, contrasts)
    per_seed = {
        prefix: {
            label.rsplit(", seed ", 1)[1]: discernment(record["summary"]).get("XSTest", (None,))[0]
            for label, record in evaluated.items()
            if label.startswith(prefix)
        }
        for prefix, _ in arms
    }
    record = {"settings": settings, "variants": changes, "per_seed": per_seed, "intervals": tables, "seconds": seconds}
    out.mkdir(parents=True, exist_ok=True)
    paths = {k: out / v for k, v in FILES.items()}
    paths["json"].write_text(json.dumps(record, indent=2) + "\n")
    paths["report"].write_text(render(arms, per_seed, tables, settings, seconds))
    return paths


def render(
    arms: Sequence[tuple[str, str]],
    per_seed: Mapping[str, Mapping[str, float | None]],
    tables: Mapping[str, Mapping[str, Mapping[str, float]]],
    settings: Mapping[str, Any],
    seconds: float,
) -> str:
    """Markdown: one discernment row per arm or variant, then every rate's intervals, the settings, the time."""
    refine = settings["refine"]
    metric = "XSTest discernment"
    lines = [
        "# DCR sweep: the DCR stage's settings one at a time, each followed by the same alignment",
        "",
        f"Arm (b) is the profile's setting (layer {refine.get('layer')}, loss {refine.get('loss')}, sources "
        f"{refine.get('sources') or 'public sets'}); every other row changes one of them. Discernment is XSTest "
        "safe compliance + XSTest unsafe refusal (0 to 2); intervals are 95%, from a paired bootstrap over prompts "
        "and seeds.",
        "",
        f"| arm | {metric}, per seed | mean [95%] | minus (a) [95%] | minus (b) [95%] |",
        "|---|---|---|---|---|",
    ]
    for prefix, label in arms:
        seeds = ", ".join(f"{v:.3f}" for _, v in sorted(per_seed.get(prefix, {}).items()) if v is not None)
        cells = [seeds or "-"]
        for key in (prefix, f"{prefix} - {BASELINE}", f"{prefix} - {PROFILE_SETTING}"):
            interval = tables.get(key, {}).get(metric)
            cells.append(fmt_interval(interval, signed=" - " in key) if interval else "-")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", *intervals_section(tables)]
    lines += [f"Wall-clock time of this run: {seconds / 60:.1f} min (finished steps that were skipped count 0).", ""]
    lines += ["## Settings", "", "```json", json.dumps(settings, indent=2), "```", ""]
    return "\n".join(lines)
