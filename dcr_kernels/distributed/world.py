"""The ranks a loss runs on, and the check they all agree on before any embedding moves.

Each rank validates its own inputs and contributes one row of numbers (sizes, dim, dtype code, the call's
options). One all_gather of that small tensor shows every rank every row, so an invalid input on one rank,
or ranks that disagree on shapes, dtypes or options, raise the same error on every rank instead of leaving
the others waiting in a collective that never completes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    """A process group (None: the default group) with this process's rank in it; size 1 without
    torch.distributed, so the losses run unchanged in a single process."""

    group: dist.ProcessGroup | None
    rank: int
    size: int

    @classmethod
    def of(cls, group: dist.ProcessGroup | None = None) -> World:
        if not (dist.is_available() and dist.is_initialized()):
            if group is not None:
                raise ValueError("a process group was given but torch.distributed is not initialized")
            return cls(None, 0, 1)
        return cls(group, dist.get_rank(group), dist.get_world_size(group))

    def global_rank(self, group_rank: int) -> int:
        """The default group's rank of `group_rank` (point-to-point ops address global ranks)."""
        return group_rank if self.group is None else dist.get_global_rank(self.group, group_rank)

    def small_device(self) -> torch.device:
        """Where small control tensors live: the current GPU under NCCL, else the CPU."""
        if dist.get_backend(self.group) == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")


def agree(
    world: World, fn: str, fields: Sequence[str], check: Callable[[], dict[str, float]]
) -> list[dict[str, float]]:
    """Run `check` (this rank's validation, returning its row of `fields`) and gather every rank's row.

    If any rank's check raised, every rank raises one error quoting each failing rank's message: a
    TypeError if all of them were TypeErrors, else a ValueError."""
    error: Exception | None = None
    try:
        values = check()
        row = [float(values[name]) for name in fields]
    except Exception as exc:  # shared with every rank below, whatever it is
        error, row = exc, [0.0] * len(fields)
    if world.size == 1:
        if error is not None:
            raise error
        return [dict(zip(fields, row, strict=True))]
    mine = torch.tensor([float(error is not None), *row], dtype=torch.float64, device=world.small_device())
    table = [torch.empty_like(mine) for _ in range(world.size)]
    dist.all_gather(table, mine, group=world.group)
    rows = [t.tolist() for t in table]
    failed = [r for r, t in enumerate(rows) if t[0]]
    if failed:
        reports: list[tuple[str, str] | None] = [None] * world.size
        mine_report = None if error is None else (type(error).__name__, str(error))
        dist.all_gather_object(reports, mine_report, group=world.group)
        kind = TypeError if all(reports[r][0] == "TypeError" for r in failed) else ValueError
        text = "; ".join(f"rank {r}: {reports[r][0]}: {reports[r][1]}" for r in failed)
        summary = f"{fn}: invalid input on {len(failed)} of {world.size} ranks, so every rank stops here."
        raise kind(f"{summary} {text}") from error
    return [dict(zip(fields, t[1:], strict=True)) for t in rows]


def require_same(
    table: list[dict[str, float]], names: Sequence[str], fn: str, show: Callable[[str, float], str]
) -> None:
    """Raise (identically on every rank, since every rank holds the same table) if ranks differ in `names`."""
    for name in names:
        for r, row in enumerate(table):
            if row[name] != table[0][name]:
                raise ValueError(
                    f"{fn}: ranks disagree on {name}: rank 0 has {show(name, table[0][name])}, rank {r} has "
                    f"{show(name, row[name])}; every rank must pass embeddings of the same dim and dtype and call "
                    "the loss with the same options"
                )
