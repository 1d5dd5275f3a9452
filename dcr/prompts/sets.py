"""Labelled prompt sets for the DCR stage: the shipped sources or the user's own file, as `datasets` objects.

Rows are deduplicated on case- and space-normalised text, prompts that appear under two labels are dropped
(they would be both positives and negatives), XSTest prompts never enter training unless the DCR paper's
protocol is asked for by name (`PAPER_SOURCES`), and the train/validation split is a hash of the normalised
text, so it is deterministic and stable when sources are added.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import datasets

from dcr import DATA_DIR
from dcr.prompts.sources import DEFAULT_SOURCES, EVAL_ONLY_SOURCES, PAPER_SOURCES, TRAIN_SOURCES, dcr_hh_prompts
from dcr.prompts.tables import DataError, normalise, read_table

DEFAULT_CLASSES = ("seemingly_toxic", "toxic")


def _read_shipped(names: Sequence[str]) -> datasets.Dataset:
    unknown = sorted(set(names) - set(TRAIN_SOURCES) - set(EVAL_ONLY_SOURCES) - set(PAPER_SOURCES))
    if unknown:
        raise DataError(f"unknown shipped source(s) {unknown}; available: {list(TRAIN_SOURCES + PAPER_SOURCES)}")
    parts = []
    for name in names:
        if name in PAPER_SOURCES:
            ds = _paper_source(name)
        else:
            ds = datasets.Dataset.from_json(str(DATA_DIR / name / "prompts.jsonl")).select_columns(["text", "label"])
        parts.append(ds.add_column("source", [name] * len(ds)))
    return datasets.concatenate_datasets(parts)


def _paper_source(name: str) -> datasets.Dataset:
    if name == "xstest_safe":
        xstest = load_xstest()
        texts = [t for t, label in zip(xstest["text"], xstest["label"], strict=True) if label == "seemingly_toxic"]
        label = "seemingly_toxic"
    else:
        texts, label = list(dcr_hh_prompts()), "toxic"
    return datasets.Dataset.from_dict({"text": texts, "label": [label] * len(texts)})


def load_xstest() -> datasets.Dataset:
    """XSTest v2 for evaluation only: columns text, label (toxic = unsafe, seemingly_toxic = safe), type."""
    return datasets.Dataset.from_json(str(DATA_DIR / "xstest" / "prompts.jsonl"))


def _clean(ds: datasets.Dataset, classes: Sequence[str], exclude: set[str]) -> datasets.Dataset:
    """Drop empty, excluded, out-of-class, duplicate and label-conflicting rows; keep first occurrences."""
    labels_of: dict[str, set[str]] = {}
    for text, label in zip(ds["text"], ds["label"], strict=True):
        labels_of.setdefault(normalise(text), set()).add(label)
    keep, seen = [], set()
    for i, (text, label) in enumerate(zip(ds["text"], ds["label"], strict=True)):
        key = normalise(text)
        if not key or key in exclude or key in seen or label not in classes or len(labels_of[key]) > 1:
            continue
        seen.add(key)
        keep.append(i)
    return ds.select(keep)


def load_labelled(
    data: str | Path | datasets.Dataset | None = None,
    *,
    classes: Sequence[str] | None = None,
    text_column: str = "text",
    label_column: str = "label",
    sources: Sequence[str] | None = None,
) -> tuple[datasets.Dataset, list[str]]:
    """Load, clean and label prompts; return the dataset (text, label id, label_name, source) and class names.

    ``data=None`` uses the shipped sources (``sources`` selects among them); otherwise a CSV/JSONL/JSON/Parquet
    file, a folder written by ``save_to_disk`` or a ``datasets.Dataset`` with a text and a label column.
    Class ids follow the order of ``classes`` (default: the shipped classes, or the sorted label values).
    """
    if data is None:
        ds = _read_shipped(list(sources) if sources else list(DEFAULT_SOURCES))
        classes = list(classes) if classes else list(DEFAULT_CLASSES)
    else:
        ds = read_table(data, text_column, label_column)
        classes = [str(c) for c in classes] if classes else sorted(set(ds["label"]))
    if len(set(classes)) != len(classes):
        raise DataError(f"classes {classes} contain duplicates")
    if len(ds) == 0:
        raise DataError("the prompt data is empty")
    named_xstest = data is None and sources is not None and "xstest_safe" in sources
    xstest = set() if named_xstest else {normalise(t) for t in load_xstest()["text"]}
    ds = _clean(ds, classes, exclude=xstest)
    counts = {c: 0 for c in classes}
    for label in ds["label"]:
        counts[label] += 1
    too_small = [c for c, n in counts.items() if n < 2]
    if len(classes) < 2 or too_small:
        raise DataError(
            f"contrastive training needs at least two classes with two prompts each; got {counts}"
            + (f" (label values must match classes {classes})" if too_small else "")
        )
    ids = {c: i for i, c in enumerate(classes)}
    ds = ds.rename_column("label", "label_name")
    ds = ds.add_column("label", [ids[c] for c in ds["label_name"]])
    return ds, classes


def in_validation(text: str, fraction: float) -> bool:
    """Whether a prompt belongs to the validation split: a fixed hash of its normalised text."""
    digest = hashlib.sha256(normalise(text).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") < fraction * 2**64


def split(ds: datasets.Dataset, val_fraction: float) -> datasets.DatasetDict:
    """Deterministic train/validation split by text hash (independent of row order and seed)."""
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"val_fraction must be in [0, 1), got {val_fraction}")
    flags = [in_validation(t, val_fraction) for t in ds["text"]]
    train = ds.select([i for i, f in enumerate(flags) if not f])
    validation = ds.select([i for i, f in enumerate(flags) if f])
    return datasets.DatasetDict(train=train, validation=validation)
