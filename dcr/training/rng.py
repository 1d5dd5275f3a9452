"""Capture and replay the torch random state (CPU and CUDA), for checkpoints and gradient caching."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


def capture() -> dict[str, object]:
    """The current CPU and (if initialised) CUDA generator states."""
    state: dict[str, object] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore(state: dict[str, object]) -> None:
    """Set the generators to a state returned by :func:`capture`."""
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextmanager
def replay(state: dict[str, object]) -> Iterator[None]:
    """Run the block from ``state`` (same dropout masks as when it was captured), then put the RNG back."""
    saved = capture()
    restore(state)
    try:
        yield
    finally:
        restore(saved)
