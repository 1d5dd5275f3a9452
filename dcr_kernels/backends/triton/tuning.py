"""Which config a kernel launch runs: tuned once per shape bucket, cached on disk, fixed when deterministic.

The best tile depends on the launch's rows M, columns N and dimension D (small M wants narrow row blocks, a
long K loop wants deeper pipelines), the loss family (Circle's epilogue holds more registers), whether the
backward has a column term, the input dtype and the fp32 precision. The key holds all of them, with M and N
rounded up to a power of two (at least 128) and D to a multiple of 64, so a training run with a ragged last
batch tunes at most a few times. Timings are kept in one JSON file per GPU model and software versions
(``$DCR_CACHE``, else ``$XDG_CACHE_HOME/dcr``, else ``~/.cache/dcr``; ``tuning/<gpu>-<versions>.json``),
written atomically and merged with what other processes wrote meanwhile, so a second process or another
rank of the same run reads the choice instead of tuning again. ``python -m dcr_kernels.tune`` fills the
cache ahead of training.

Deterministic mode (``torch.use_deterministic_algorithms(True)`` or ``DCR_DETERMINISTIC=1``) skips tuning
and runs the first config of each list, and the forward's column splits stop depending on the GPU's SM
count (`launch.column_splits`), so the order of every sum is fixed and results are bit-identical across
processes and runs on a GPU model.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import torch
import triton

_CACHE_VERSION = 1


def deterministic() -> bool:
    """Whether the launches must not depend on timings or on the GPU's size."""
    return torch.are_deterministic_algorithms_enabled() or os.environ.get("DCR_DETERMINISTIC", "0") == "1"


def bucket(size: int, floor: int) -> int:
    """``size`` rounded up to a power of two, at least ``floor``."""
    return max(floor, 1 << max(0, size - 1).bit_length())


def tuning_key(
    kernel_name: str,
    rows: int,
    cols: int,
    dim: int,
    dtype: torch.dtype,
    precision: str,
    loss: int,
    col_term: bool,
    guided: bool = False,
) -> str:
    """The cache key of a launch: what changes the best config, with sizes in buckets."""
    dims = f"M{bucket(rows, 128)}-N{bucket(cols, 128)}-D{-(-dim // 64) * 64}"
    kind = f"{str(dtype).removeprefix('torch.')}-{precision}-loss{loss}-col{int(col_term)}"
    kind += "-guided" if guided else ""
    return f"{kernel_name}/{kind}/{dims}"


def cache_dir() -> Path:
    root = os.environ.get("DCR_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "dcr"
    return Path(root) / "tuning"


def cache_file(device_name: str) -> Path:
    """The cache of one GPU model under the installed Triton, PyTorch and dcr-kernels."""
    try:
        ours = metadata.version("dcr-kernels")
    except metadata.PackageNotFoundError:  # run from a source tree that is not installed
        ours = "src"
    versions = f"triton{triton.__version__}-torch{torch.__version__}-dcr{ours}"
    name = re.sub(r"[^A-Za-z0-9.]+", "_", f"{device_name}-{versions}")
    return cache_dir() / f"{name}.json"


class TuningCache:
    """The chosen config index per key for one GPU model, in memory and on disk."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.choices: dict[str, int] = self._read()

    def _read(self) -> dict[str, int]:
        """The file's valid choices; none for a missing or damaged file (rewritten by the next choice)."""
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        choices = data.get("choices") if isinstance(data, dict) and data.get("version") == _CACHE_VERSION else None
        if not isinstance(choices, dict):
            return {}
        return {k: v for k, v in choices.items() if isinstance(k, str) and type(v) is int and v >= 0}

    def refresh(self) -> None:
        """Take in the choices other processes wrote since this one read the file."""
        self.choices = {**self.choices, **self._read()}

    def get(self, key: str) -> int | None:
        return self.choices.get(key)

    def put(self, key: str, index: int) -> None:
        """Record a choice and write the file atomically, keeping what other processes added meanwhile."""
        self.choices = {**self._read(), **self.choices, key: index}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".tuning-", dir=self.path.parent)
        except OSError:  # a read-only cache only costs tuning again in the next process
            return
        try:
            with os.fdopen(fd, "w") as f:
                json.dump({"version": _CACHE_VERSION, "choices": self.choices}, f, indent=1, sort_keys=True)
            os.chmod(tmp, 0o644)  # readable by the other users of a shared DCR_CACHE
            os.replace(tmp, self.path)
        except OSError:
            Path(tmp).unlink(missing_ok=True)


_CACHES: dict[Path, TuningCache] = {}


def cache_for(device_name: str) -> TuningCache:
    path = cache_file(device_name)
    if path not in _CACHES:
        _CACHES[path] = TuningCache(path)
    return _CACHES[path]


def choose(key: str, candidates: int, device_name: str, time_config: Callable[[int], float]) -> int:
    """The index of the config to run for ``key``: 0 when deterministic or with a single candidate, else the
    cached choice, else the fastest by ``time_config(index)`` (seconds), which is then cached."""
    if candidates <= 1 or deterministic() or os.environ.get("DCR_TRITON_AUTOTUNE", "1") == "0":
        return 0
    cache = cache_for(device_name)
    index = cache.get(key)
    if index is None:
        cache.refresh()  # another process or rank may have tuned it since this one read the file
        index = cache.get(key)
    if index is None or not 0 <= index < candidates:
        timings = [time_config(i) for i in range(candidates)]
        index = min(range(candidates), key=timings.__getitem__)
        cache.put(key, index)
    return index
