"""Per-step metrics as JSON lines, one object per line, flushed as written.

On resume the log is cut back to the records up to the resumed step, so an interrupted and resumed run
leaves the same log as an uninterrupted one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class JsonlLog:
    """Append-only metrics log at ``path``, keeping only records with ``step <= keep_until``."""

    def __init__(self, path: Path, keep_until: int = 0) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        kept = []
        if keep_until and path.exists():
            kept = [
                line
                for line in path.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= keep_until
            ]
        path.write_text("".join(line + "\n" for line in kept))

    def write(self, record: dict[str, Any]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")


def read_log(path: Path) -> list[dict[str, Any]]:
    """All records of a metrics log."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
