"""What the data-building scripts share: reading raw JSONL (optionally gzipped) and writing an extract
beside its source's SOURCE.md and LICENSE, so the attribution travels with the data."""

from __future__ import annotations

import gzip
import json
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path


def read_jsonl(path: Path) -> Iterator[dict]:
    """The non-empty lines of a JSONL file (``.gz`` read compressed) as dictionaries."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def write_extract(rows: Iterable[dict], src: Path, dst: Path, filename: str) -> int:
    """Write ``rows`` to ``dst/filename`` (JSONL) and copy ``src``'s SOURCE.md and LICENSE; return the count."""
    dst.mkdir(parents=True, exist_ok=True)
    n = 0
    with (dst / filename).open("w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
            n += 1
    for meta in ("SOURCE.md", "LICENSE"):
        if (src / meta).exists():
            shutil.copyfile(src / meta, dst / meta)
    return n
