"""Moving key blocks to the rows that need them: one gathered block, or every rank's block around a ring.

Gather: an all_gather of variable-size row blocks (padded to the largest), with autograd: the backward
sums every rank's gradient of the gathered tensor (all_reduce) and keeps this rank's rows, which is the
gradient of the sum of all ranks' losses. Ring: blocks move from rank r to r + 1 with point-to-point
sends; the next block is in flight while the caller computes on the current one. Walking backwards, each
block's gradient travels with it, every rank adding its part, and arrives home after a full turn.
Both are `KeySource`s: they yield (source, block) and say which pair of a block is excluded.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Protocol

import torch
import torch.distributed as dist
from torch import Tensor

from .world import World

_KEYS, _GRADS = 1, 2  # point-to-point tags: key blocks, travelling gradients


class BackWalk(Iterable[tuple[int, Tensor]], Protocol):
    """Blocks to visit while computing gradients: `give` each yielded block's gradient; then `total` holds
    the gradient of this rank's own block, summed over every rank."""

    total: Tensor | None

    def give(self, grad: Tensor) -> None: ...


class KeySource(Protocol):
    """Where key blocks come from: `offsets[src]` is the first global key row of block `src`."""

    offsets: list[int]

    def exclude(self, src: int) -> int | None:
        """The offset of the excluded pair (i, i + offset) in block `src`, or None."""
        ...

    def walk(self, own: Tensor) -> Iterator[tuple[int, Tensor]]:
        """(src, block) for every block, given this rank's own block."""
        ...

    def walk_back(self, own: Tensor, grad_dtype: torch.dtype) -> BackWalk: ...


def offsets(sizes: list[int]) -> list[int]:
    """First global row of each rank's block."""
    out = [0]
    for n in sizes[:-1]:
        out.append(out[-1] + n)
    return out


def row_counts(x: Tensor, world: World) -> list[int]:
    """Every rank's number of rows of `x` (dim 0), in rank order."""
    if world.size == 1:
        return [x.shape[0]]
    counts = gather_rows(torch.tensor([x.shape[0]], device=x.device), [1] * world.size, world)
    return [int(n) for n in counts]


def gather_rows(x: Tensor, sizes: list[int], world: World) -> Tensor:
    """The concatenation over ranks of their `x` (rank r holds sizes[r] rows), on every rank; no autograd."""
    if world.size == 1:
        return x
    padded = x.new_zeros(max(sizes), *x.shape[1:])
    padded[: x.shape[0]] = x
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded, group=world.group)
    return torch.cat([p[:n] for p, n in zip(parts, sizes, strict=True)])


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, sizes, world):
        ctx.sizes, ctx.world = sizes, world
        return gather_rows(x.detach(), sizes, world)

    @staticmethod
    def backward(ctx, grad):
        world, sizes = ctx.world, ctx.sizes
        total = grad.contiguous().clone()
        dist.all_reduce(total, group=world.group)
        start = offsets(sizes)[world.rank]
        return total[start : start + sizes[world.rank]], None, None


def gather_with_grad(x: Tensor, sizes: list[int], world: World) -> Tensor:
    """`gather_rows` whose gradient reaching `x` is the sum over ranks of their gradients of the result."""
    return x if world.size == 1 else _GatherWithGrad.apply(x, sizes, world)


class OneBlock:
    """A single block already holding every key (the gathered batch); the pair (i, i + exclude) is excluded."""

    def __init__(self, exclude: int | None):
        self.exclude_offset, self.offsets = exclude, [0]

    def exclude(self, src: int) -> int | None:
        return self.exclude_offset

    def walk(self, own: Tensor) -> Iterator[tuple[int, Tensor]]:
        yield 0, own

    def walk_back(self, own: Tensor, grad_dtype: torch.dtype) -> _OneBack:
        return _OneBack(own)


class _OneBack:
    """The single block to visit while computing gradients (a `BackWalk`)."""

    def __init__(self, own: Tensor):
        self.own, self.total = own, None

    def __iter__(self) -> Iterator[tuple[int, Tensor]]:
        yield 0, self.own

    def give(self, grad: Tensor) -> None:
        self.total = grad


class Ring:
    """Every rank's key block (rank r holds sizes[r] rows), visited own block first, then rank r - 1's, ...;
    with `exclude` set, the pair (i, i + exclude) of the own block is excluded (self mode: 0)."""

    def __init__(self, world: World, sizes: list[int], exclude: int | None):
        self.world, self.sizes, self.exclude_offset = world, sizes, exclude
        self.offsets = offsets(sizes)
        self.next = world.global_rank((world.rank + 1) % world.size)
        self.prev = world.global_rank((world.rank - 1) % world.size)

    def exclude(self, src: int) -> int | None:
        return self.exclude_offset if src == self.world.rank else None

    def _start(self, sends: list[Tensor], recvs: list[Tensor], tag: int) -> list:
        group = self.world.group
        ops = [dist.P2POp(dist.isend, t, self.next, group, tag) for t in sends]
        ops += [dist.P2POp(dist.irecv, t, self.prev, group, tag) for t in recvs]
        return dist.batch_isend_irecv(ops)

    def _source(self, step: int) -> int:
        return (self.world.rank - step) % self.world.size

    def walk(self, own: Tensor) -> Iterator[tuple[int, Tensor]]:
        """Yield (source rank, block) for every rank's block; while the caller works on one, the next arrives."""
        current, size = own.contiguous(), self.world.size
        for step in range(size):
            src = self._source(step)
            if step < size - 1:
                incoming = own.new_empty(self.sizes[self._source(step + 1)], own.shape[1])
                pending = self._start([current], [incoming], _KEYS)
            yield src, current
            if step < size - 1:
                _wait(pending)
                current = incoming

    def walk_back(self, own: Tensor, grad_dtype: torch.dtype) -> _RingBack:
        return _RingBack(self, own, grad_dtype)


class _RingBack:
    """The ring walked for gradients (a `BackWalk`): the gradient of each block (`give`) is added to the sum
    that arrived with it and sent on with the block; after a full turn each rank receives its own block's total."""

    def __init__(self, ring: Ring, own: Tensor, grad_dtype: torch.dtype):
        self.ring, self.own, self.dtype = ring, own, grad_dtype
        self.part, self.total = None, None

    def give(self, grad: Tensor) -> None:
        self.part = grad

    def __iter__(self) -> Iterator[tuple[int, Tensor]]:
        # Messages between two neighbours are received in the order they are sent (NCCL ignores tags):
        # block t's gradient, then block t + 1's keys.
        ring, size, d = self.ring, self.ring.world.size, self.own.shape[1]
        current, last_sent = self.own.contiguous(), (None, [])  # the last gradient sent, and its work
        for step in range(size):
            src = ring._source(step)
            if step > 0:
                arriving = self.own.new_empty(ring.sizes[src], d, dtype=self.dtype)
                receiving = ring._start([], [arriving], _GRADS)
            if step < size - 1:
                incoming = self.own.new_empty(ring.sizes[ring._source(step + 1)], d)
                pending = ring._start([current], [incoming], _KEYS)
            yield src, current
            part = self.part.to(self.dtype).contiguous()
            if step > 0:
                _wait(receiving)
                part += arriving
            if size == 1:
                self.total = part
            else:
                _wait(last_sent[1])  # the previous block's gradient has left: at most one in flight
                last_sent = (part, ring._start([part], [], _GRADS))
            if step < size - 1:
                _wait(pending)
                current = incoming
        if size > 1:
            home = self.own.new_empty(ring.sizes[ring.world.rank], d, dtype=self.dtype)
            _wait(ring._start([], [home], _GRADS))
            self.total = home
        _wait(last_sent[1])


def _wait(works: list) -> None:
    for work in works:
        work.wait()
