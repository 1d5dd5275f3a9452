"""What the input checks cost per call on the CPU: forward + backward with and without ``check_inputs``.

Each loss (chunked backend, fp32, reduction mean) at each batch size runs in interleaved rounds, checked and
unchecked alternately, on one torch thread; the table gives the median milliseconds of each and the
difference per call. On a GPU the checks also cost a host synchronisation each; benchmarks/gpu_runtime_check.py
measures that case.

    python benchmarks/check_overhead.py [--batch 256 4096] [--dim 256] [--rounds 7]

writes benchmarks/results/check_overhead_cpu.json (override with --out).
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import time
from pathlib import Path

import torch

import dcr_kernels as dk

RESULT = Path(__file__).resolve().parent / "results" / "check_overhead_cpu.json"
LOSSES = {
    "info_nce": lambda x, y, check: dk.info_nce(x, backend="chunked", check_inputs=check),
    "supcon": lambda x, y, check: dk.supcon_loss(x, y, backend="chunked", check_inputs=check),
    "circle": lambda x, y, check: dk.circle_loss(x, y, backend="chunked", check_inputs=check),
}


def _seconds(loss, x: torch.Tensor, y: torch.Tensor, check: bool) -> float:
    x.grad = None
    t0 = time.perf_counter()
    loss(x, y, check).backward()
    return time.perf_counter() - t0


def measure(batch: int, dim: int, rounds: int, classes: int) -> list[dict]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, dim, generator=gen).requires_grad_()
    y = torch.randint(0, classes, (batch,), generator=gen)
    rows = []
    for name, loss in LOSSES.items():
        timed: dict[bool, list[float]] = {True: [], False: []}
        for check in (True, False):
            _seconds(loss, x, y, check)  # warm-up
        for _ in range(rounds):
            for check in (True, False):
                timed[check].append(_seconds(loss, x, y, check))
        checked, unchecked = (statistics.median(timed[c]) * 1e3 for c in (True, False))
        rows.append(
            {
                "loss": name,
                "B": batch,
                "D": dim,
                "checked_ms": round(checked, 3),
                "unchecked_ms": round(unchecked, 3),
                "checks_ms": round(checked - unchecked, 3),
                "checks_share": round((checked - unchecked) / checked, 4),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, nargs="+", default=[256, 4096])
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--classes", type=int, default=32)
    parser.add_argument("--out", type=Path, default=RESULT)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = [row for batch in args.batch for row in measure(batch, args.dim, args.rounds, args.classes)]
    result = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.processor() or platform.machine()}, 1 torch thread",
        "torch": torch.__version__,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print("| loss | B | D | checked ms | unchecked ms | checks ms per call | share |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['loss']} | {r['B']} | {r['D']} | {r['checked_ms']:.2f} | {r['unchecked_ms']:.2f} | "
            f"{r['checks_ms']:.3f} | {100 * r['checks_share']:.1f}% |"
        )


if __name__ == "__main__":
    main()
