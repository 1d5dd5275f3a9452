"""The chunked (CPU) backend against the two-GEMM floor, on one torch thread.

A self-mode loss cannot avoid two B x B x D matrix products: S = X X^T and dX = W X. Their time, the floor,
is measured in the same process as the losses' forward + backward (reduction mean, backend "chunked"), in
interleaved rounds (floor, InfoNCE, SupCon, Circle, then again), so that a noisy machine slows all of them
alike; the table gives each median and its ratio to the floor's median. The floor is `x @ x.T` plus
`w @ x` (w a B x B fp32 matrix) as written, so it includes first-touching the B x B output's pages; the
second reference, "gemm_out", is the same two products into preallocated outputs (arithmetic only).

    python benchmarks/chunked_floor.py [--batch 8192] [--dim 256] [--rounds 5] [--classes 32]

writes benchmarks/results/chunked_floor_cpu.json (override with --out).
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

import dcr_kernels

RESULT = Path(__file__).resolve().parent / "results" / "chunked_floor_cpu.json"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def steps(batch: int, dim: int, classes: int, seed: int = 0) -> dict[str, Callable[[], None]]:
    """name -> one timed call: the floor (the two products), the same into preallocated outputs, and each
    loss's forward + backward."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, dim, generator=gen).requires_grad_()
    labels = torch.randint(0, classes, (batch,), generator=gen)
    w = torch.randn(batch, batch, generator=gen) / batch
    xd = x.detach()
    s_out, dx_out = torch.empty(batch, batch), torch.empty(batch, dim)

    def floor() -> None:
        xd @ xd.T
        w @ xd

    def gemm_out() -> None:
        torch.mm(xd, xd.T, out=s_out)
        torch.mm(w, xd, out=dx_out)

    def loss_step(fn: Callable[[], torch.Tensor]) -> Callable[[], None]:
        def run() -> None:
            x.grad = None
            fn().backward()

        return run

    return {
        "floor": floor,
        "gemm_out": gemm_out,
        "info_nce": loss_step(lambda: dcr_kernels.info_nce(x, backend="chunked")),
        "supcon": loss_step(lambda: dcr_kernels.supcon_loss(x, labels, backend="chunked")),
        "circle": loss_step(lambda: dcr_kernels.circle_loss(x, labels, backend="chunked")),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8192)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--classes", type=int, default=32, help="label classes of SupCon and Circle")
    parser.add_argument("--out", type=Path, default=RESULT)
    args = parser.parse_args()
    torch.set_num_threads(1)
    run = steps(args.batch, args.dim, args.classes)
    for step in run.values():  # warm-up: first-touch pages, library initialisation
        step()
    times: dict[str, list[float]] = {name: [] for name in run}
    for _ in range(args.rounds):
        for name, step in run.items():
            t0 = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - t0)
    medians = {name: statistics.median(t) for name, t in times.items()}
    print(f"B={args.batch} D={args.dim} fp32, 1 thread, {args.rounds} rounds, {args.classes} classes")
    print(f"{'step':<10}{'median s':>10}{'x floor':>9}{'x gemm_out':>12}")
    for name, med in medians.items():
        print(f"{name:<10}{med:>10.3f}{med / medians['floor']:>9.2f}{med / medians['gemm_out']:>12.2f}")
    result = {
        "what": "chunked backend, forward + backward of the mean loss vs the two-GEMM floor (x @ x.T + w @ x)",
        "batch": args.batch,
        "dim": args.dim,
        "dtype": "float32",
        "threads": 1,
        "rounds": args.rounds,
        "classes": args.classes,
        "cpu": cpu_model(),
        "torch": torch.__version__,
        "date": datetime.date.today().isoformat(),
        "times_s": times,
        "median_s": medians,
        "ratio_to_floor": {name: med / medians["floor"] for name, med in medians.items()},
        "ratio_to_gemm_out": {name: med / medians["gemm_out"] for name, med in medians.items()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
