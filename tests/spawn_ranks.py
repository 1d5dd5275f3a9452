"""Start a gloo world of processes for a test (as torchrun would), tolerating one known fault: a rank whose
C++ teardown aborts ("terminate called without an active exception") after its work is done and written.
The workers finish with a barrier before tearing down, so by the time any rank can abort every rank has
written what the test reads; `done()` checks that, and anything else still fails the test."""

from __future__ import annotations

from collections.abc import Callable

import torch.multiprocessing as mp


def spawn_ranks(worker: Callable, world: int, args: tuple, done: Callable[[], bool]) -> None:
    try:
        mp.spawn(worker, args=(world, *args), nprocs=world, join=True)
    except mp.ProcessExitedException as err:
        if err.signal_name != "SIGABRT" or not done():
            raise
