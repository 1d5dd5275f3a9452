"""Re-score a finished evaluation with another refusal judge, from its completions, without generating again.

Generation is the slow part of an evaluation on a CPU and the verdicts are cheap, so a better judge should not
cost a new evaluation: `rejudge` reads a run folder's results.json and completions.jsonl, judges every response
again, recomputes each set's rates and the summary's behaviour scores, and rewrites results.json,
completions.jsonl and report.md. The representation and perplexity results do not depend on the judge and are
kept.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tqdm.auto import tqdm

from dcr.config import ConfigError
from dcr.evaluation.evaluate import behaviour, judged_rows, summary_key
from dcr.evaluation.judge import load_judge
from dcr.evaluation.report import FILES, write_results


def rescore(folder: str | Path, judge: str, *, device: str | torch.device = "cpu", progress: bool = False):
    """(results, completion rows) of the finished evaluation in ``folder`` judged by ``judge``; nothing is
    written."""
    folder = Path(folder)
    paths = {k: folder / FILES[k] for k in ("results", "completions")}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise ConfigError(f"{folder} is not a finished evaluation: {', '.join(missing)} missing; run dcr evaluate")
    results = json.loads(paths["results"].read_text(encoding="utf-8"))
    with paths["completions"].open(encoding="utf-8") as f:
        completions = [json.loads(line) for line in f if line.strip()]
    judged_by = load_judge(judge, device=device)
    rejudged: list[dict] = []
    for set_name, previous in tqdm(results["sets"].items(), desc="rejudge", unit="set", disable=not progress):
        generated = [c for c in completions if c["set"] == set_name]
        prompts = [{"id": c["id"], "text": c["prompt"], "type": c.get("type")} for c in generated]
        rows = judged_rows(set_name, prompts, [c["response"] for c in generated], judged_by)
        results["sets"][set_name] = behaviour(rows, previous["expected"])
        results["summary"][summary_key(set_name, previous["expected"])] = results["sets"][set_name]["score"]
        rejudged += rows
    results["settings"]["judge"] = judge
    return results, rejudged


def rejudge(folder: str | Path, judge: str, *, device: str | torch.device = "cpu", progress: bool = False) -> dict:
    """Judge the completions in ``folder`` with ``judge`` (``cues``, a trained judge's folder or a chat-model
    folder); return the new results, also written to ``folder``."""
    results, rows = rescore(folder, judge, device=device, progress=progress)
    write_results(results, rows, Path(folder))
    return results
