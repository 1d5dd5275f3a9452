"""The held-out evaluation sets and the behaviour each one expects (comply or refuse), and user sets.

None of these prompts is in the alignment data. XSTest is excluded from every DCR-stage source unless the DCR
paper's protocol names it (`dcr.prompts.sets.PAPER_SOURCES`); JailbreakBench's topic-matched benign and harmful
behaviours are one of the public DCR-stage sources, so they are held out only for a DCR stage that does not use
them (the pipeline's report says which sets its DCR stage saw); the CoCoNot evaluation prompts are a different
file from the CoCoNot preference pairs used for training; and the Self-Instruct user-oriented tasks are
evaluation-only by their authors' request (their reference answers serve the perplexity proxy).

A user set is a file of one's own named in place of a shipped set: ``PATH[:TEXT_COLUMN[:EXPECT_COLUMN]]``
(a CSV, JSONL, JSON or Parquet file, or a `datasets` folder; columns default to ``prompt`` and
``expect``). The expect column says comply or refuse (also: compliance / safe / benign, refusal / unsafe /
harmful / toxic); its rows become up to two report sets, ``<file stem>_comply`` and ``<file stem>_refuse``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from dcr import DATA_DIR
from dcr.prompts.tables import DataError, read_table


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
    "jailbreakbench_benign": EvalSet(
        "jailbreakbench",
        "comply",
        "JailbreakBench benign behaviours, topic-matched to the harmful ones",
        "seemingly_toxic",
    ),
    "jailbreakbench_harmful": EvalSet("jailbreakbench", "refuse", "JailbreakBench harmful behaviours", "toxic"),
    "coconot_eval": EvalSet("coconot_eval", "refuse", "CoCoNot evaluation, requests with safety concerns"),
    "self_instruct_user": EvalSet("self_instruct_user", "comply", "Self-Instruct user-oriented tasks (benign)"),
}
DEFAULT_SETS = ("xstest_safe", "xstest_unsafe", "coconot_eval", "self_instruct_user")


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


COMPLY = {"comply", "compliance", "safe", "benign"}
REFUSE = {"refuse", "refusal", "unsafe", "harmful", "toxic"}


def is_user_set(spec: str) -> bool:
    """Whether a set name is a user set (a path, with optional columns) rather than a shipped set's name."""
    return spec not in SETS


def parse_user_set(spec: str) -> tuple[str | None, str, str, str]:
    """(name, path, text column, expected column) of `[NAME=]PATH[:TEXT_COLUMN[:EXPECT_COLUMN]]`. The path is
    the longest prefix that exists, so a path may itself contain ':'."""
    name, _, rest = spec.partition("=") if "=" in spec.split(":")[0] else (None, "", spec)
    parts = rest.split(":")
    for cut in range(len(parts), 0, -1):
        path = ":".join(parts[:cut])
        if Path(path).exists() and len(parts) - cut <= 2:
            columns = parts[cut:] + ["prompt", "expect"][len(parts) - cut :]
            return name or None, path, columns[0], columns[1]
    return name or None, parts[0], "prompt", "expect"


def load_user_set(spec: str, limit: int | None = None) -> list[tuple[str, str, list[dict]]]:
    """(report name, expected behaviour, rows) for each behaviour present in a user set
    `[NAME=]PATH[:TEXT_COLUMN[:EXPECT_COLUMN]]` (NAME defaults to the file's stem)."""
    name, path, text_column, expect_column = parse_user_set(spec)
    if not Path(path).exists():
        raise DataError(
            f"unknown evaluation set {spec!r}: neither a shipped set ({list(SETS)}) nor an existing file "
            "([NAME=]PATH[:TEXT_COLUMN[:EXPECT_COLUMN]])"
        )
    table = read_table(path, text_column, expect_column, require_text=True)
    name = name or Path(path).stem
    wanted = {"comply": [], "refuse": []}
    unknown = set()
    for i, (text, value) in enumerate(zip(table["text"], table["label"], strict=True)):
        key = str(value).strip().lower()
        behaviour = "comply" if key in COMPLY else "refuse" if key in REFUSE else None
        if behaviour is None:
            unknown.add(str(value))
            continue
        wanted[behaviour].append({"id": f"{name}-{i}", "text": text})
    if unknown:
        raise DataError(
            f"{path}: column {expect_column!r} has values {sorted(unknown)[:5]} that are neither comply "
            f"({sorted(COMPLY)}) nor refuse ({sorted(REFUSE)})"
        )
    return [(f"{name}_{b}", b, spread(rows, limit)) for b, rows in wanted.items() if rows]


def resolve_sets(names: list[str], limit: int | None = None) -> list[tuple[str, str, list[dict]]]:
    """(report name, expected behaviour, rows) of every shipped or user set named."""
    out = []
    for name in names:
        if is_user_set(name):
            out += load_user_set(name, limit)
        else:
            out.append((name, SETS[name].expected, load_set(name, limit)))
    seen: dict[str, int] = {}
    for report_name, _, _ in out:
        seen[report_name] = seen.get(report_name, 0) + 1
    twice = sorted(n for n, count in seen.items() if count > 1)
    if twice:
        raise DataError(
            f"evaluation sets {twice} are named twice (files with the same name?); name them apart with "
            "NAME=PATH[:TEXT_COLUMN[:EXPECT_COLUMN]]"
        )
    return out
