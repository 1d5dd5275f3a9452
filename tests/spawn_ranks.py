"""Start a gloo world of processes for a test (as torchrun would), tolerating one known fault: a rank whose
C++ teardown aborts ("terminate called without an active exception") after its work is done and written.
The workers finish with a barrier before tearing down, so by the time any rank can abort every rank has
written what the test reads; `done()` checks that, and anything else still fails the test."""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import Callable

import torch
import torch.multiprocessing as mp


def spawn_ranks(worker: Callable, world: int, args: tuple, done: Callable[[], bool]) -> None:
    try:
        mp.spawn(worker, args=(world, *args), nprocs=world, join=True)
    except mp.ProcessExitedException as err:
        if err.signal_name != "SIGABRT" or not done():
            raise


def rank_reports(worker: Callable, world: int) -> list:
    """Run `worker(rank, world, folder)` on `world` gloo processes, each saving its report to
    folder/rank<r>.pt (before the closing barrier); return the reports in rank order."""
    with tempfile.TemporaryDirectory() as folder:
        paths = [os.path.join(folder, f"rank{r}.pt") for r in range(world)]
        spawn_ranks(worker, world, (folder,), done=lambda: all(map(os.path.exists, paths)))
        return [torch.load(path) for path in paths]


def free_port() -> int:
    """A TCP port that is free now, for the ranks' rendezvous."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launcher_env(rank: int, world: int, port: int) -> None:
    """The environment torchrun gives a rank (one thread each, so that two ranks share the CPU fairly)."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)
