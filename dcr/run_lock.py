"""One owner per run folder: `dcr refine`, `align`, `evaluate` and `pipeline` claim their output folder for the
whole run, so that a second process (with or without `--resume`) is refused at once instead of interleaving
logs and checkpoints with the first.

The claim is a file `.dcr-lock.json` created atomically (O_EXCL) in the folder, naming the owner's PID, host,
start time and command; it is removed when the run ends, also on an exception. A lock whose process is gone
(killed, crashed) is taken over with a warning; a lock from another host cannot be checked and is refused
with the path to remove. Under torchrun / accelerate the process group claims the folder once, through rank
0, and every rank fails together if the claim is refused.
"""

from __future__ import annotations

import atexit
import datetime as dt
import json
import os
import socket
import sys
import warnings
from pathlib import Path
from typing import Any

from dcr.config import ConfigError

LOCK_NAME = ".dcr-lock.json"


def _alive(owner: dict[str, Any]) -> bool:
    """Whether the lock's owner may still run (a process on another host cannot be checked: assume so)."""
    if owner.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(owner["pid"]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # vanished, or being written by its owner


class FolderLock:
    """The claim on one run folder; `release` (or leaving the `with` block) gives it up."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.held = False

    def acquire(self) -> FolderLock:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ConfigError(f"cannot create the output folder {self.folder}: {err.strerror or err}") from err
        me = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join(sys.argv),
        }
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = _read(self.path)
                if owner is None or _alive(owner):
                    who = "another process" if owner is None else f"pid {owner['pid']} on {owner['host']}"
                    since = "" if owner is None else f" since {owner.get('started')} ({owner.get('command', '')})"
                    raise ConfigError(
                        f"{self.folder} is in use by {who}{since}; wait for it to finish or choose another "
                        f"output folder (if that process is gone, remove {self.path})"
                    ) from None
                warnings.warn(
                    f"taking over {self.folder}: its lock names pid {owner['pid']} on {owner['host']}, which is no "
                    "longer running",
                    RuntimeWarning,
                    stacklevel=3,
                )
                self.path.unlink(missing_ok=True)
                continue
            except OSError as err:
                raise ConfigError(f"cannot write to the output folder {self.folder}: {err.strerror or err}") from err
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.held = True
            atexit.register(self.release)
            return self
        raise ConfigError(f"{self.folder} is being claimed by another process; try again")

    def release(self) -> None:
        if self.held:
            owner = _read(self.path)
            if owner is not None and owner.get("pid") == os.getpid():
                self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> FolderLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def claim(folder: str | Path, ranks: Any) -> FolderLock:
    """Claim `folder` for this run: rank 0 takes the lock for the process group (`ranks`, a
    `dcr.modeling.ranks.Ranks`), and if it is refused every rank raises."""
    lock = FolderLock(folder)
    refused: ConfigError | None = None
    if ranks.main:
        try:
            lock.acquire()
        except ConfigError as err:
            refused = err
    if ranks.sum(1.0 if refused is not None else 0.0) > 0:
        raise refused or ConfigError(f"rank 0 could not claim {folder}; see its error")
    return lock
