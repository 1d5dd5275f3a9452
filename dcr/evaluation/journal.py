"""Responses kept as they are generated, so that a failed or killed evaluation loses none and a rerun continues.

Every rank appends its responses, one JSON line per prompt, to ``generated.rank<r>.jsonl`` in the output folder
after each generation batch (flushed and fsynced). The file opens with a header: the key of what decides the
responses (the model folder's files with sizes and modification times, the weights' dtype, the device, the
generation settings). A rerun reads the journals of every rank whose key equals its own, skips the prompts
found there (matched on set, id and text) and generates the rest; a journal with another key is stale and is
replaced. The torn last line of a killed write is ignored. The journals go once the results are written.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dcr.run_lock import LOCK_NAME

PATTERN = "generated.rank*.jsonl"


def folder_fingerprint(folder: str | Path) -> list[list[Any]]:
    """(name, bytes, modification time in ns) of every file in a model folder: changes when the weights do.
    Journals and the run lock are left out, in case the evaluation writes into the model's own folder."""
    files = [p for p in sorted(Path(folder).iterdir()) if p.is_file() and not _is_run_file(p)]
    return [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files]


def _is_run_file(path: Path) -> bool:
    return path.match(PATTERN) or path.name == LOCK_NAME


def _entry(set_name: str, prompt: Mapping[str, Any]) -> tuple[str, str, str]:
    return set_name, str(prompt["id"]), prompt["text"]


class GenerationJournal:
    """The journal of one rank in ``folder``; ``key`` says what decides the responses (JSON-serialisable)."""

    def __init__(self, folder: str | Path, key: Mapping[str, Any], rank: int = 0) -> None:
        self.folder = Path(folder)
        self.key = json.loads(json.dumps(key))
        self.path = self.folder / f"generated.rank{rank}.jsonl"
        self.found: dict[tuple[str, str, str], str] = {}
        self._own_is_current = False
        self._file = None
        for path in sorted(self.folder.glob(PATTERN)):
            current = self._read(path)
            if path == self.path:
                self._own_is_current = current

    def _read(self, path: Path) -> bool:
        """Add the responses of a journal with this key; False when its key differs (a stale journal)."""
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        try:
            if not lines or json.loads(lines[0]).get("journal") != self.key:
                return False
        except (ValueError, AttributeError):
            return False
        for line in lines[1:]:
            try:
                row = json.loads(line)
                self.found[(row["set"], str(row["id"]), row["text"])] = row["response"]
            except (ValueError, KeyError, TypeError):  # the torn last line of a killed write
                continue
        return True

    def known(self, set_name: str, prompts: Sequence[Mapping[str, Any]]) -> dict[int, str]:
        """Responses already generated for ``prompts`` of ``set_name``, by position."""
        out = {}
        for i, prompt in enumerate(prompts):
            response = self.found.get(_entry(set_name, prompt))
            if response is not None:
                out[i] = response
        return out

    def record(self, set_name: str, prompts: Sequence[Mapping[str, Any]], responses: Sequence[str]) -> None:
        """Append responses to this rank's journal and make them durable before generation goes on."""
        if self._file is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            if self._own_is_current:
                self._file = self.path.open("a", encoding="utf-8")
                if self.path.stat().st_size and not self.path.read_bytes().endswith(b"\n"):
                    self._file.write("\n")  # end the torn line of a killed write
            else:
                self._file = self.path.open("w", encoding="utf-8")
                self._file.write(json.dumps({"journal": self.key}) + "\n")
        for prompt, response in zip(prompts, responses, strict=True):
            set_, id_, text = _entry(set_name, prompt)
            self._file.write(json.dumps({"set": set_, "id": id_, "text": text, "response": response}) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def remove_all(self) -> None:
        """Delete every rank's journal (the results are written; nothing is left to continue)."""
        self.close()
        for path in self.folder.glob(PATTERN):
            path.unlink(missing_ok=True)
