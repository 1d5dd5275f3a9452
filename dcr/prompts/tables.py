"""Reading prompt tables: the shipped JSON Lines files and a user's CSV / JSON Lines / Parquet file or dataset,
with errors that name the file, the line or the rows; the normalised text every set deduplicates on."""

from __future__ import annotations

import json
import math
from pathlib import Path

import datasets

_SUFFIX_BUILDERS = {".csv": "csv", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}


class DataError(ValueError):
    """The prompt data cannot be used for contrastive training."""


def normalise(text: str) -> str:
    """Case- and whitespace-insensitive key used for deduplication and the split."""
    return " ".join(text.casefold().split())


def read_jsonl(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def read_table(
    data: str | Path | datasets.Dataset, text_column: str, label_column: str, *, require_text: bool = False
) -> datasets.Dataset:
    """A user's file or dataset as (text, label) columns, with clear errors for a missing file or column and
    for a malformed file; with `require_text`, empty or missing (None, NaN) texts are refused naming the rows
    (training data drops them instead: `_clean`)."""
    if isinstance(data, datasets.DatasetDict):
        raise DataError("pass a single split (a datasets.Dataset), not a DatasetDict")
    if isinstance(data, datasets.Dataset):
        ds = data
    else:
        path = Path(data)
        if not path.exists():
            raise DataError(f"data file {path} does not exist")
        if path.is_dir():
            ds = datasets.load_from_disk(str(path))
            if isinstance(ds, datasets.DatasetDict):
                raise DataError(f"{path} holds a DatasetDict; point at one split's folder")
        else:
            builder = _SUFFIX_BUILDERS.get(path.suffix.lower())
            if builder is None:
                raise DataError(f"unsupported data file {path}: use .csv, .jsonl, .json, .parquet or a dataset folder")
            if path.stat().st_size == 0:
                raise DataError(f"data file {path} is empty")
            ds = _load_file(builder, path)
            if len(ds) == 0:
                raise DataError(f"data file {path} has no rows")
    missing = [c for c in (text_column, label_column) if c not in ds.column_names]
    if missing:
        raise DataError(f"data has no column(s) {missing}; columns are {ds.column_names}")
    ds = ds.select_columns([text_column, label_column])
    if require_text:
        empty = [i for i, t in enumerate(ds[text_column]) if _missing(t)]
        if empty:
            shown = ", ".join(map(str, empty[:5])) + (f" and {len(empty) - 5} more" if len(empty) > 5 else "")
            raise DataError(
                f"{data}: column {text_column!r} is empty or missing in row(s) {shown} (counting from 0); "
                "fill or drop them"
            )
    texts = [str(t) if t is not None else "" for t in ds[text_column]]
    labels = [str(v) for v in ds[label_column]]
    return datasets.Dataset.from_dict({"text": texts, "label": labels, "source": ["user"] * len(texts)})


def _missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or not str(value).strip()


def _load_file(builder: str, path: Path) -> datasets.Dataset:
    """The file as a dataset; text files are checked first (UTF-8, and for JSON Lines one object per line),
    so that a malformed file is refused naming the file and the line, not with a parser's traceback."""
    if builder != "parquet":
        try:
            text = path.read_bytes().decode("utf-8")
        except UnicodeDecodeError as err:
            line = path.read_bytes()[: err.start].count(b"\n") + 1
            raise DataError(f"{path}, line {line}: not UTF-8 text; save the file as UTF-8") from None
        if builder == "csv" and sum(1 for line in text.splitlines() if line.strip()) < 2:
            raise DataError(f"data file {path} has no rows (a header only?)")
        if path.suffix.lower() == ".jsonl":
            for number, line in enumerate(text.splitlines(), 1):
                try:
                    row = json.loads(line) if line.strip() else {}
                except ValueError as err:
                    raise DataError(f"{path}, line {number}: not valid JSON ({err}); one object per line") from None
                if not isinstance(row, dict):
                    raise DataError(f"{path}, line {number}: a JSON object per line is expected")
    loader = {
        "csv": datasets.Dataset.from_csv,
        "json": datasets.Dataset.from_json,
        "parquet": datasets.Dataset.from_parquet,
    }[builder]
    try:
        return loader(str(path))
    except Exception as err:  # the parsers' own errors, reported against the file
        raise DataError(f"cannot read {path}: {str(err).splitlines()[0] if str(err) else type(err).__name__}") from err
