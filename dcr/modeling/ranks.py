"""The processes of a run: one under plain `python`, several under `torchrun` or `accelerate launch`.

Both launchers set RANK, WORLD_SIZE and LOCAL_RANK (and the rendezvous address); `start` joins the
process group they describe (NCCL on GPUs, gloo on CPUs) with a timeout, so a rank that dies ends the
others with an error instead of a hang, and picks this rank's device. Rank 0 writes the run folder
(metrics, checkpoints, the model); every rank computes.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from dcr.config import ConfigError
from dcr.modeling.runtime import pick_device

TIMEOUT = dt.timedelta(minutes=float(os.environ.get("DCR_RANK_TIMEOUT_MIN", "10")))


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def share(self, n: int) -> slice:
        """This rank's contiguous share of n rows (the first n % world ranks take one more)."""
        base, extra = divmod(n, self.world)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + (self.rank < extra))

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def sum(self, value: float) -> float:
        """The sum of `value` over ranks."""
        if self.world == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=collective_device())
        dist.all_reduce(t)
        return float(t)

    def micro_batches(self, rows: list, micro: int, batch: int, *, same_count: bool) -> list[list]:
        """This rank's ``rows`` (its share of a global ``batch``) in micro-batches of at most ``micro``.

        With ``same_count`` every rank gets the same number, ceil(ceil(batch / world) / micro), split
        evenly, so that collectives run per micro-batch (sharded layers gather in every forward) match."""
        if not same_count:
            return [rows[k : k + micro] for k in range(0, len(rows), micro)]
        per_rank = -(-batch // self.world)  # the largest share
        count = -(-per_rank // micro)
        if len(rows) < count:
            raise ConfigError(
                f"a batch of {batch} over {self.world} ranks at micro-batch {micro} leaves rank {self.rank} "
                f"{len(rows)} rows for {count} micro-batches; raise the batch or the micro-batch"
            )
        base, extra = divmod(len(rows), count)
        bounds = [i * base + min(i, extra) for i in range(count + 1)]
        return [rows[bounds[i] : bounds[i + 1]] for i in range(count)]

    def reduce_gradients(self, params: list[torch.Tensor], mean: bool) -> None:
        """Sum (or average) every parameter's gradient over ranks, in one flat buffer."""
        if self.world == 1 or not params:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        if mean:
            flat /= self.world
        for p, g in zip(params, flat.split([g.numel() for g in grads]), strict=True):
            if p.grad is None:
                p.grad = g.view_as(p).clone()
            else:
                p.grad.copy_(g.view_as(p))


def collective_device() -> torch.device:
    """Where a small tensor for a collective lives: this rank's GPU under NCCL, else the CPU."""
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def start(device: str) -> tuple[Ranks, torch.device]:
    """Join the launcher's process group (if any) and pick this rank's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Ranks(), pick_device(device)
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    on_gpu = torch.cuda.is_available() and device in ("auto", "cuda")
    chosen = torch.device("cuda", local) if on_gpu else pick_device(device)
    if chosen.type == "cuda":
        torch.cuda.set_device(chosen)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if chosen.type == "cuda" else "gloo", timeout=TIMEOUT)
    return Ranks(rank, world), chosen
