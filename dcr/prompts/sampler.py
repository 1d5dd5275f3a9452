"""Class-balanced contrastive batches: every batch holds the same number of prompts from each class.

Each class is read through an endless stream of seeded permutations of its rows, so the batch at step t is
a pure function of (labels, batch size, seed, t). Resuming at a step therefore needs no sampler state
beyond the step itself, and a resumed run sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np


class BalancedBatchSampler:
    """Yield lists of row indices with ``batch_size // num_classes`` rows of every class."""

    def __init__(self, labels: Sequence[int], batch_size: int, seed: int = 0, start_step: int = 0) -> None:
        labels = np.asarray(labels, dtype=np.int64)
        classes = np.unique(labels)
        if len(classes) < 2:
            raise ValueError(f"a balanced contrastive batch needs at least two classes, got {classes.tolist()}")
        if batch_size % len(classes) or batch_size // len(classes) < 2:
            raise ValueError(
                f"batch_size ({batch_size}) must be a multiple of the number of classes ({len(classes)}) "
                "with at least two prompts per class"
            )
        self.rows = [np.flatnonzero(labels == c) for c in classes]
        self.per_class = batch_size // len(classes)
        self.seed = seed
        self.step = start_step

    def _permutation(self, cls: int, epoch: int) -> np.ndarray:
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, cls, epoch]))
        return self.rows[cls][rng.permutation(len(self.rows[cls]))]

    def batch(self, step: int) -> list[int]:
        """Row indices of the batch at ``step`` (class by class)."""
        out: list[int] = []
        for cls, rows in enumerate(self.rows):
            start = step * self.per_class
            first, last = start // len(rows), (start + self.per_class - 1) // len(rows)
            stream = np.concatenate([self._permutation(cls, e) for e in range(first, last + 1)])
            offset = start - first * len(rows)
            out.extend(int(i) for i in stream[offset : offset + self.per_class])
        return out

    def __iter__(self) -> Iterator[list[int]]:
        while True:
            self.step += 1
            yield self.batch(self.step - 1)
