"""Wall-clock time of a step: the median of repeats after warm-up, with device synchronisation."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def times(
    run: Callable[[], object], device: torch.device, warmup: int, repeats: int, reset: Callable[[], None]
) -> list[float]:
    """Seconds of each of `repeats` calls of `run`, after `warmup` untimed calls; `reset` (untimed) runs
    before every call. CUDA calls are timed with events."""
    for _ in range(warmup):
        reset()
        run()
    out = []
    for _ in range(repeats):
        reset()
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize(device)
            start.record()
            run()
            end.record()
            torch.cuda.synchronize(device)
            out.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            run()
            out.append(time.perf_counter() - t0)
    return out


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None
