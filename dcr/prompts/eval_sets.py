"""The held-out evaluation sets and the behaviour each one expects (comply or refuse).

None of these prompts is used for training: XSTest is excluded from every training source, the CoCoNot
evaluation prompts are a different file from the CoCoNot preference pairs used for training, and the
Self-Instruct user-oriented tasks are evaluation-only by their authors' request (their reference answers
serve the perplexity proxy).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

from dcr import DATA_DIR


@dataclass(frozen=True)
class EvalSet:
    """A named prompt set: its file, an optional label filter, the expected behaviour and what it measures."""

    folder: str
    expected: Literal["comply", "refuse"]
    description: str
    label: str | None = None


SETS: dict[str, EvalSet] = {
    "xstest_safe": EvalSet(
        "xstest", "comply", "XSTest safe prompts that only look toxic (over-refusal)", "seemingly_toxic"
    ),
    "xstest_unsafe": EvalSet("xstest", "refuse", "XSTest unsafe contrast prompts", "toxic"),
    "coconot_eval": EvalSet("coconot_eval", "refuse", "CoCoNot evaluation, requests with safety concerns"),
    "self_instruct_user": EvalSet("self_instruct_user", "comply", "Self-Instruct user-oriented tasks (benign)"),
}
DEFAULT_SETS = tuple(SETS)


def spread(rows: list[dict], limit: int | None) -> list[dict]:
    """At most ``limit`` rows evenly spaced through the file, so a quick run still covers every prompt type."""
    if limit is None or limit >= len(rows):
        return rows
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    return [rows[i * len(rows) // limit] for i in range(limit)]


def load_set(name: str, limit: int | None = None) -> list[dict]:
    """Rows of a set (``id``, ``text``, plus ``type``/``subcategory``/``answer`` where the source has them)."""
    if name not in SETS:
        raise ValueError(f"unknown evaluation set {name!r}; available: {list(SETS)}")
    spec = SETS[name]
    with (DATA_DIR / spec.folder / "prompts.jsonl").open(encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return spread([r for r in rows if spec.label is None or r["label"] == spec.label], limit)
